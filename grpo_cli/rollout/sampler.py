"""What a sampler is: the interface the loop uses, and the rollouts it hands over.

Two samplers implement it: the vLLM engine colocated in the training process
(grpo_cli/rollout/colocated.py) and a vLLM server (grpo_cli/rollout/server.py);
grpo_cli/rollout/engines.py picks one from `sampler.kind`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from grpo_cli.errors import UserError


@dataclass
class Rollouts:
    """n completions per prompt, prompt-major: completion j of prompt i is at index i * n + j."""

    prompt_ids: list[list[int]]  # [N] prompt token ids of each completion's prompt
    completion_ids: list[list[int]]  # [N] sampled token ids (EOS included when it was sampled)
    texts: list[str]  # [N] decoded completions
    finish_reasons: list[str]  # [N] "stop" or "length"
    logprobs: list[list[float]]  # [N] the sampler's log-prob of each sampled token
    version: int = -1  # the learner step whose weights sampled them (-1: not tracked)

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)

    @property
    def truncated(self) -> list[bool]:
        """[N] the completion hit max_tokens instead of stopping."""
        return truncated(self.finish_reasons)


def truncated(finish_reasons: list[str]) -> list[bool]:
    """Which completions hit max_tokens (vLLM's finish reason "length") rather than stopping."""
    return [r == "length" for r in finish_reasons]


class SamplerError(UserError):
    """The sampler failed: a vLLM server that died or hung, or a setting this engine cannot take."""


class Sampler(Protocol):
    """What the loop needs of a sampler; both samplers are also context managers (`with`)."""

    version: int  # the learner step whose weights it holds

    def generate(self, prompt_ids: list[list[int]], n: int, temperature: float | None = None,
                 max_tokens: int | None = None) -> Rollouts:
        """n completions of each prompt, prompt-major."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """The learner's weights, by transformers' names, as the engine's new weights."""

    def sleep(self) -> None:
        """Give the engine's GPU memory to the learner until the next `load_weights` (or do nothing)."""
