"""Rewards: named callables combined with weights. Each is logged on its own; None means "not
applicable" and is left out.

Rewards are called the way TRL's GRPOTrainer calls them, so a reward written for TRL works here
unchanged: `fn(prompts=..., completions=..., completion_ids=..., **columns) -> list[float | None]`,
where `columns` are the dataset's columns (all but `prompt`, `completion` and `completion_ids`),
one value per completion. For a conversational dataset (a `prompt` column of chat messages)
`prompts` are the message lists and each completion is `[{"role": "assistant", "content": text}]`;
otherwise both are strings. `completion_text` turns either form into text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from grpo_cli.config import reward_spec
from grpo_cli.errors import UserError

if TYPE_CHECKING:
    from grpo_cli.data import PromptBatch
    from grpo_cli.sampler import Rollouts

RewardFn = Callable[..., list]
# TRL passes these as arguments of their own, never as dataset columns.
_NOT_COLUMNS = ("prompt", "completion", "completion_ids")


def completion_text(completion: str | list[dict]) -> str:
    """A completion as text: itself, or the content of the last message of a conversational one."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


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

    def __call__(self, batch: PromptBatch, rollouts: Rollouts) -> RewardResult:
        """Score `rollouts` ([N]) of `batch` (its rows repeated to [N], as `PromptBatch.repeat` does)."""
        prompts, completions = batch.reward_prompts, batch.reward_completions(rollouts.texts)
        columns = {k: v for k, v in batch.columns.items() if k not in _NOT_COLUMNS}
        columns["completion_ids"] = rollouts.completion_ids
        per_reward = {name: self._score(name, fn, prompts, completions, columns) for name, (fn, _) in self.funcs.items()}
        stacked = torch.stack([per_reward[n] * w for n, (_, w) in self.funcs.items()])  # [R, N]
        total = torch.nansum(stacked, 0)  # [N]
        total[torch.isnan(stacked).all(0)] = math.nan  # no reward applied: not a 0
        return RewardResult(total, per_reward)

    @staticmethod
    def _score(name, fn, prompts, completions, columns) -> torch.Tensor:
        try:
            values = fn(prompts=prompts, completions=completions, **columns)
        except Exception as err:
            raise RewardError(f"reward '{name}' raised {type(err).__name__}: {err}") from err
        if values is None or len(values) != len(completions):
            got = "None" if values is None else f"{len(values)} values"
            raise RewardError(f"reward '{name}' returned {got} for {len(completions)} completions")
        try:
            return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise RewardError(f"reward '{name}' returned a non-number: {err}") from err
