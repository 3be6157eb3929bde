"""How a batch of prompts becomes completions: one turn (`SingleTurn`), or turns with tool calls in
between (grpo_cli/tools/loop.py, `ToolLoop`). The training draws (grpo_cli/rollout/source.py) and
the evaluation (grpo_cli/rollout/evaluate.py) call either the same way."""

from __future__ import annotations

from typing import Protocol

from grpo_cli.rollout.prompts import PromptBatch, PromptFormatter
from grpo_cli.rollout.sampler import Rollouts, Sampler


class Generation(Protocol):
    def __call__(self, batch: PromptBatch, n: int, seeds: list[int] | None = None, temperature: float | None = None,
                 max_tokens: int | None = None) -> Rollouts:
        """n completions of each prompt of `batch`, prompt-major; `seeds` one per prompt (completion
        j of prompt i draws with seeds[i] + j); temperature and max_tokens default to `sampler`'s."""


class SingleTurn:
    """One completion per draw: the prompt's tokens to the sampler, its completion back."""

    def __init__(self, sampler: Sampler, fmt: PromptFormatter):
        self.sampler, self.fmt = sampler, fmt

    def __call__(self, batch: PromptBatch, n: int, seeds: list[int] | None = None, temperature: float | None = None,
                 max_tokens: int | None = None) -> Rollouts:
        return self.sampler.generate(self.fmt.encode(batch.prompts), n, temperature, max_tokens, seeds)
