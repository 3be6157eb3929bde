"""Rewards: named callables `fn(prompts, completions, **columns) -> list[float | None]`, combined
with weights. Each is logged on its own; None means "not applicable" and is left out."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from grpo_cli.config import reward_spec
from grpo_cli.errors import UserError

RewardFn = Callable[..., list]


class RewardError(UserError):
    """A reward function failed or returned something unusable; the message names it."""


@dataclass
class RewardResult:
    total: torch.Tensor  # [N] weighted sum of the applicable rewards; NaN if none applied
    per_reward: dict[str, torch.Tensor]  # name -> [N], NaN where that reward returned None


def load_reward_fn(name: str, spec) -> RewardFn:
    """A dotted path to a callable, or a `_target_` node instantiated into one."""
    try:
        fn = get_object(spec) if isinstance(spec, str) else instantiate(spec)
    except Exception as err:  # Hydra wraps import errors; say which reward and why
        raise RewardError(f"reward.funcs.{name}.fn: cannot load {spec!r}: {err}") from err
    if not callable(fn):
        raise RewardError(f"reward.funcs.{name}.fn: {spec!r} is not callable")
    return fn


class Rewards:
    def __init__(self, funcs: dict[str, tuple[RewardFn, float]]):
        self.funcs = funcs

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Rewards:
        specs = {name: reward_spec(name, entry) for name, entry in cfg.funcs.items()}
        return cls({name: (load_reward_fn(name, s.fn), s.weight) for name, s in specs.items()})

    @property
    def names(self) -> list[str]:
        return list(self.funcs)

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list],
                 completion_ids: list[list[int]] | None = None) -> RewardResult:
        """`completion_ids` (token ids of each completion) reach every reward as a keyword argument."""
        if completion_ids is not None:
            columns = {**columns, "completion_ids": completion_ids}
        per_reward = {name: self._score(name, fn, prompts, completions, columns) for name, (fn, _) in self.funcs.items()}
        stacked = torch.stack([per_reward[n] * w for n, (_, w) in self.funcs.items()])  # [R, N]
        total = torch.nansum(stacked, 0)  # [N]
        total[torch.isnan(stacked).all(0)] = math.nan  # no reward applied: not a 0
        return RewardResult(total, per_reward)

    @staticmethod
    def _score(name, fn, prompts, completions, columns) -> torch.Tensor:
        try:
            values = fn(prompts, completions, **columns)
        except Exception as err:
            raise RewardError(f"reward '{name}' raised {type(err).__name__}: {err}") from err
        if values is None or len(values) != len(completions):
            got = "None" if values is None else f"{len(values)} values"
            raise RewardError(f"reward '{name}' returned {got} for {len(completions)} completions")
        try:
            return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise RewardError(f"reward '{name}' returned a non-number: {err}") from err
