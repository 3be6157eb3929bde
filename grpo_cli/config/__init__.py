"""The typed config schema, its validation, and where the config tree lives."""
