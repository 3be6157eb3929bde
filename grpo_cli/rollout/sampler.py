"""What a sampler is: the interface the loop uses, and the rollouts it hands over.

Two samplers implement it: the vLLM engine colocated in the training process
(grpo_cli/rollout/colocated.py) and a vLLM server (grpo_cli/rollout/server.py);
grpo_cli/rollout/engines.py picks one from `sampler.kind`.
"""

from __future__ import annotations

import hashlib
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


MAX_N = 4096  # completions of one request: each prompt's seed is this far from the next one's


def rollout_seed(run_seed: int, step: int, index: int, evaluation: bool = False) -> int:
    """The `SamplingParams.seed` of prompt `index` (its global index among the step's draws: every
    rank's share and every re-draw of the batch filter counted) at `step`: a function of the run's
    seed and the rollout's identity only, never of engine state or request arrival order.

    vLLM gives completion j of a seeded request the seed `seed + j` (v1/engine/parallel_sampling.py),
    so the seeds are MAX_N apart and a group's completions never share one. Distinct (step, index,
    evaluation) of one run give distinct seeds (the key is XORed with a hash of the run seed: a
    bijection), below 2**63 (vLLM's and torch's limit)."""
    if not (0 <= index < 2**20 and 0 <= step < 2**30):
        raise ValueError(f"rollout_seed: step {step} or prompt index {index} out of range")
    key = (step << 21) | (int(evaluation) << 20) | index
    mix = int.from_bytes(hashlib.blake2b(str(run_seed).encode(), digest_size=8).digest(), "little")
    return ((key ^ mix) & (2**51 - 1)) * MAX_N


class SamplerError(UserError):
    """The sampler failed: a vLLM server that died or hung, or a setting this engine cannot take."""


class Sampler(Protocol):
    """What the loop needs of a sampler; both samplers are also context managers (`with`)."""

    version: int  # the learner step whose weights it holds

    def generate(self, prompt_ids: list[list[int]], n: int, temperature: float | None = None,
                 max_tokens: int | None = None, seeds: list[int] | None = None) -> Rollouts:
        """n completions of each prompt, prompt-major. `seeds` (one per prompt, `rollout_seed`):
        completion j of prompt i is drawn with seed `seeds[i] + j`; None draws from the engine's
        generator (what `sampler.reproducible=false` does)."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """The learner's weights, by transformers' names, as the engine's new weights."""

    def sleep(self) -> None:
        """Give the engine's GPU memory to the learner until the next `load_weights` (or do nothing)."""
