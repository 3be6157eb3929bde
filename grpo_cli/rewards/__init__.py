"""Rewards: named callables combined with weights. Each is logged on its own; None means "not
applicable" and is left out.

Rewards are called the way TRL's GRPOTrainer calls them, so a reward written for TRL works here
unchanged: `fn(prompts=..., completions=..., completion_ids=..., **columns) -> list[float | None]`,
where `columns` are the dataset's columns (all but `prompt`, `completion` and `completion_ids`),
one value per completion. For a conversational dataset (a `prompt` column of chat messages)
`prompts` are the message lists and each completion is `[{"role": "assistant", "content": text}]`;
otherwise both are strings. A rollout with tool calls is always messages (assistant, tool, ...,
assistant), and with `tools.environment` each call also gets `environments`, every rollout's
own. `completion_text` turns either form into text (the last message's).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from grpo_cli.config.validate import reward_spec
from grpo_cli.errors import UserError

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
    errors: dict[str, int] = field(default_factory=dict)  # name -> 1 if that reward's call raised


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
    def __init__(self, funcs: dict[str, tuple[RewardFn, float]], max_failures_in_a_row: int = 3,
                 accuracy: str | None = None):
        self.funcs = dict(funcs)
        self.accuracy = accuracy or next(iter(funcs), None)  # its 1.0 counts as correct (eval/accuracy, pass@k)
        # A reward that raises scores that call None; one that keeps raising stops the run.
        self.max_failures_in_a_row = max_failures_in_a_row
        self.failures_in_a_row = {name: 0 for name in funcs}
        self.failing: str | None = None  # set once a reward failed max_failures_in_a_row calls in a row
        self._warned: set[str] = set()  # rewards whose failure was printed

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Rewards:
        specs = {name: reward_spec(name, entry) for name, entry in cfg.funcs.items()}
        return cls({name: (load_reward_fn(name, s.fn), s.weight) for name, s in specs.items()},
                   cfg.max_failures_in_a_row, cfg.accuracy)

    def add(self, name: str, fn: RewardFn, weight: float = 1.0) -> None:
        """One more reward (an environment's `get_reward`, named after its class, weight 1 as in TRL)."""
        if name in self.funcs:
            raise RewardError(f"reward.funcs.{name}: the environment's reward {name!r} has the name of a configured "
                              "reward; rename one of them")
        self.funcs[name] = (fn, weight)
        self.failures_in_a_row[name] = 0
        self.accuracy = self.accuracy or name

    def state_dict(self) -> dict:
        """The failure counters a checkpoint keeps: a resumed run does not give a failing reward
        `max_failures_in_a_row` fresh calls."""
        return {"failures_in_a_row": dict(self.failures_in_a_row)}

    def load_state_dict(self, state: dict) -> None:
        self.failures_in_a_row |= {k: v for k, v in state["failures_in_a_row"].items() if k in self.funcs}

    @property
    def names(self) -> list[str]:
        return list(self.funcs)

    @property
    def weights(self) -> dict[str, float]:
        return {name: w for name, (_, w) in self.funcs.items()}

    def __call__(self, batch, rollouts) -> RewardResult:
        """Score `rollouts` ([N], a grpo_cli.rollout.sampler.Rollouts) of `batch` (a PromptBatch whose
        rows are repeated to [N], as `PromptBatch.repeat` does)."""
        prompts = batch.reward_prompts
        # Multi-turn rollouts (tools) are chat messages (assistant, tool, ..., assistant), as in TRL.
        completions = rollouts.messages if rollouts.messages is not None else batch.reward_completions(rollouts.texts)
        columns = {k: v for k, v in batch.columns.items() if k not in _NOT_COLUMNS}
        columns["completion_ids"] = rollouts.completion_ids
        if rollouts.environments is not None:  # tools.environment: each rollout's, as TRL passes them
            columns["environments"] = rollouts.environments
        errors = {}
        per_reward = {name: self._score(name, fn, prompts, completions, columns, errors)
                      for name, (fn, _) in self.funcs.items()}
        stacked = torch.stack([per_reward[n] * w for n, (_, w) in self.funcs.items()])  # [R, N]
        total = torch.nansum(stacked, 0)  # [N]
        total[torch.isnan(stacked).all(0)] = math.nan  # no reward applied: not a 0
        return RewardResult(total, per_reward, errors)

    def _score(self, name, fn, prompts, completions, columns, errors: dict[str, int]) -> torch.Tensor:
        try:
            values = fn(prompts=prompts, completions=completions, **columns)
        except Exception as err:
            return self._failed(name, err, len(completions), errors)
        self.failures_in_a_row[name] = errors[name] = 0
        if values is None or len(values) != len(completions):
            got = "None" if values is None else f"{len(values)} values"
            raise RewardError(f"reward '{name}' returned {got} for {len(completions)} completions")
        try:
            return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise RewardError(f"reward '{name}' returned a non-number: {err}") from err

    def _failed(self, name: str, err: Exception, n: int, errors: dict[str, int]) -> torch.Tensor:
        """This call's completions get no score (None); the first failure is printed, every one counted."""
        errors[name] = 1
        self.failures_in_a_row[name] += 1
        error = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        if name not in self._warned:
            self._warned.add(name)
            print(f"grpo-train: warning: reward '{name}' raised {error} (that call's completions get no score; "
                  f"counted in reward/{name}/errors)", file=sys.stderr, flush=True)
        limit = self.max_failures_in_a_row
        if limit and self.failures_in_a_row[name] >= limit and self.failing is None:
            self.failing = f"reward '{name}' failed on {limit} calls in a row ({error})"
        return torch.full((n,), math.nan)
