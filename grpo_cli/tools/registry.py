"""The run's tools, in TRL's forms: plain functions (`tools.funcs`, TRL's `tools=`) and an
environment class (`tools.environment`, TRL's `environment_factory=`) whose public methods are
tools, with one instance per rollout.

A tool's JSON schema comes from its type hints and Google-style docstring
(`transformers.utils.get_json_schema`), as chat templates expect; the prompt gets every schema
through the model's chat template. An environment's `reset(**row)` starts a rollout (text it
returns is appended to the user turn); its optional `get_reward()` becomes a reward named after
the class, as in TRL.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig
from transformers.utils import get_json_schema

from grpo_cli.errors import ConfigError

_NOT_TOOLS = ("reset", "get_reward")  # an environment's methods that the model never calls


@dataclass
class Tool:
    name: str
    fn: Callable[..., Any]
    schema: dict  # {"type": "function", "function": {"name", "description", "parameters"}}


def as_tool(fn: Callable, where: str) -> Tool:
    """A callable as a tool: a function or method by its `__name__`, a callable object by its
    `name` attribute (else its class name), its schema from the signature and docstring."""
    if not callable(fn):
        raise ConfigError(f"{where}: {fn!r} is not callable")
    plain = inspect.isfunction(fn) or inspect.ismethod(fn)
    name = fn.__name__ if plain else getattr(fn, "name", type(fn).__name__.lower())
    try:
        schema = get_json_schema(fn if plain else fn.__call__)
    except Exception as err:  # transformers' DocstringParsingException / TypeHintParsingException
        raise ConfigError(f"{where}: cannot describe tool {name!r} to the model ({err}); a tool needs type hints "
                          "and a Google-style docstring with an Args: section") from None
    schema["function"]["name"] = name
    return Tool(name, fn, schema)


def load_callable(spec, where: str) -> Any:
    """A dotted path, or a `_target_` node instantiated."""
    try:
        return get_object(spec) if isinstance(spec, str) else instantiate(spec)
    except Exception as err:
        raise ConfigError(f"{where}: cannot load {spec!r} ({type(err).__name__}: {err})") from None


def environment_tools(env: Any, where: str) -> list[Tool]:
    """The public methods of an environment instance, bound to it, as tools."""
    return [as_tool(getattr(env, name), f"{where}.{name}") for name, member in inspect.getmembers(type(env))
            if not name.startswith("_") and name not in _NOT_TOOLS and inspect.isfunction(member)]


class Toolbox:
    """The tools of a run; `for_rollout()` gives one rollout its own (a fresh environment)."""

    def __init__(self, funcs: list[Tool], environment: Callable[[], Any] | None = None):
        self.funcs, self.environment = funcs, environment
        probe = environment() if environment else None  # one instance, to read its tools (as TRL does)
        env_tools = environment_tools(probe, "tools.environment") if probe is not None else []
        self.schemas = [t.schema for t in funcs + env_tools]  # what the chat template shows the model
        names = [t.name for t in funcs + env_tools]
        if len(set(names)) < len(names):
            raise ConfigError(f"tools: two tools share a name ({', '.join(sorted(names))}); every tool needs its own")
        # An environment that owns its reward: `get_reward()`, a reward named after its class.
        self.reward_name = type(probe).__name__ if callable(getattr(probe, "get_reward", None)) else None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Toolbox | None:
        """None when the run has no tools (single-turn rollouts)."""
        funcs = [as_tool(load_callable(spec, f"tools.funcs[{i}]"), f"tools.funcs[{i}]") for i, spec in enumerate(cfg.funcs)]
        env = load_callable(cfg.environment, "tools.environment") if cfg.environment else None
        if env is not None and not callable(env):
            raise ConfigError(f"tools.environment={cfg.environment!r} is not a class or factory")
        if not funcs and env is None:
            return None
        return cls(funcs, env)

    def for_rollout(self) -> tuple[dict[str, Callable], Any]:
        """The tools one rollout may call (name -> callable) and its environment (None without one)."""
        env = self.environment() if self.environment else None
        tools = {t.name: t.fn for t in self.funcs}
        if env is not None:
            tools |= {t.name: t.fn for t in environment_tools(env, "tools.environment")}
        return tools, env


def environment_reward(environments: list | None = None, **_) -> list[float | None]:
    """The reward of environments that own it (TRL's form): each rollout's `get_reward()`."""
    if environments is None:
        raise ValueError("no environments were passed (tools.environment is not set)")
    return [e.get_reward() for e in environments]
