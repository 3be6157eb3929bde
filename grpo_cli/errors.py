"""Errors caused by a user's input. The CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """Bad config, data or reward: the message names the key or file and what is allowed."""


class ConfigError(UserError):
    """A user's config value is invalid; the message names the key and what is allowed."""
