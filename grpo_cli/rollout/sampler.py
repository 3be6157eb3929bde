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


def rollout_seed(run_seed: int, step: int, index: int, evaluation: bool = False) -> int:
    """The `SamplingParams.seed` of prompt `index` (its global index among the step's draws: every
    rank's share and every re-draw of the batch filter counted) at `step`: a function of the run's
    seed and the rollout's identity only, never of engine state or request arrival order.

    A hash of (run seed, step, evaluation, index), below 2**62. Its LOW 32 BITS must differ from
    rollout to rollout: torch's CPU generator (mt19937), which vLLM's CPU sampler seeds with
    `manual_seed(seed)`, keeps only those, so seeds that differ only above bit 31 draw the same
    numbers (measured: manual_seed(7) and manual_seed(7 + 2**33) give equal samples). vLLM gives
    completion j of a seeded request the seed `seed + j` (v1/engine/parallel_sampling.py); two
    prompts' ranges [seed, seed + n) overlap with probability ~ n / 2**31 per pair: negligible."""
    if not (0 <= index and 0 <= step):
        raise ValueError(f"rollout_seed: step {step} or prompt index {index} out of range")
    key = f"{run_seed}:{step}:{int(evaluation)}:{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**62 - 1)


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
