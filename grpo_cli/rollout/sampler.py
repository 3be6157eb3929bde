"""What a sampler is: the interface the loop uses, and the rollouts it hands over.

Two samplers implement it: the vLLM engine colocated in the training process
(grpo_cli/rollout/colocated.py) and a vLLM server (grpo_cli/rollout/server.py);
grpo_cli/rollout/engines.py picks one from `sampler.kind`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from grpo_cli.errors import UserError


@dataclass
class ToolUse:
    """What the tools did for a batch of multi-turn rollouts (grpo_cli/tools/loop.py)."""

    turns: list[int]  # [N] assistant turns of each trajectory (1: no tool result came back)
    used: list[bool]  # [N] the trajectory called at least one tool
    calls: dict[str, int] = field(default_factory=dict)  # tool name -> calls
    failures: dict[str, int] = field(default_factory=dict)  # tool name -> calls that became an error message
    dropped: int = 0  # tool results dropped because they would overflow the completion budget
    seconds: float = 0.0  # wall time spent running tools

    def pick(self, idx: list[int]) -> ToolUse:
        """Trajectories `idx`; the batch's counts stay as they were (they describe what was drawn)."""
        return replace(self, turns=[self.turns[i] for i in idx], used=[self.used[i] for i in idx])

    def metrics(self) -> dict[str, float]:
        """Per step: calls and failures (in all, and per tool), the share of rollouts that used a
        tool, assistant turns per rollout, results dropped for lack of room, seconds in tools."""
        n = max(len(self.turns), 1)
        per_tool = {f"tools/{name}/{what}": counts.get(name, 0) for name in sorted(self.calls)
                    for what, counts in (("calls", self.calls), ("failures", self.failures))}
        return {"tools/calls": sum(self.calls.values()), "tools/failures": sum(self.failures.values()),
                "tools/used_frac": sum(self.used) / n, "tools/turns_mean": sum(self.turns) / n,
                "tools/dropped": self.dropped, "time/tools_s": self.seconds, **per_tool}

    @staticmethod
    def concat(parts: list[ToolUse]) -> ToolUse:
        add = lambda key: {k: sum(getattr(p, key).get(k, 0) for p in parts)  # noqa: E731
                           for k in {k for p in parts for k in getattr(p, key)}}
        return ToolUse([t for p in parts for t in p.turns], [u for p in parts for u in p.used], add("calls"),
                       add("failures"), sum(p.dropped for p in parts), sum(p.seconds for p in parts))


@dataclass
class Rollouts:
    """n completions per prompt, prompt-major: completion j of prompt i is at index i * n + j.

    A multi-turn rollout (tools) is one completion too: every assistant turn and every tool
    result, token after token as the sampler saw them; `tool_mask` tells which tokens the model
    generated (1) and which a tool wrote (0, never trained on)."""

    prompt_ids: list[list[int]]  # [N] prompt token ids of each completion's prompt
    completion_ids: list[list[int]]  # [N] sampled token ids (EOS included when it was sampled)
    texts: list[str]  # [N] decoded completions
    finish_reasons: list[str]  # [N] "stop" or "length"
    logprobs: list[list[float]]  # [N] the sampler's log-prob of each sampled token (0.0 on tool tokens)
    version: int = -1  # the learner step whose weights sampled them (-1: not tracked)
    tool_mask: list[list[int]] | None = None  # [N] per completion token: 1 model-generated, 0 tool result
    messages: list[list[dict]] | None = None  # [N] the completion as chat messages (assistant, tool, ...)
    tools: ToolUse | None = None  # what the tools did (multi-turn rollouts only)
    environments: list | None = None  # [N] each rollout's environment (tools.environment), until it is scored

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)

    @property
    def truncated(self) -> list[bool]:
        """[N] the completion hit max_tokens instead of stopping."""
        return truncated(self.finish_reasons)

    def pick(self, idx: list[int]) -> Rollouts:
        """Completions `idx`, in that order."""
        take = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return Rollouts(take(self.prompt_ids), take(self.completion_ids), take(self.texts), take(self.finish_reasons),
                        take(self.logprobs), self.version, take(self.tool_mask), take(self.messages),
                        None if self.tools is None else self.tools.pick(idx), take(self.environments))

    @staticmethod
    def concat(parts: list[Rollouts]) -> Rollouts:
        """One after the other; the version is the oldest weights that sampled any of them."""
        def cat(name: str):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else [x for v in values for x in v]

        tools = [p.tools for p in parts]
        return Rollouts(cat("prompt_ids"), cat("completion_ids"), cat("texts"), cat("finish_reasons"), cat("logprobs"),
                        min(p.version for p in parts), cat("tool_mask"), cat("messages"),
                        None if any(t is None for t in tools) else ToolUse.concat(tools), cat("environments"))


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


def per_prompt(max_tokens: int | list[int], n: int) -> list[int]:
    """`max_tokens` as one budget per prompt."""
    return list(max_tokens) if isinstance(max_tokens, list | tuple) else [max_tokens] * n


def cpu_prefill_args(max_model_len: int) -> dict:
    """Engine arguments vLLM's CPU backend needs for seeded requests: prefills never split.

    When a prefill is split across engine steps (chunked prefill: a long prompt, or many prompts
    past `max_num_batched_tokens`), vLLM discards the token sampled for the unfinished request and
    rewinds its generator (v1/worker/gpu_model_runner.py, `_bookkeeping_sync`: `gen.set_offset`);
    a seeded request on the CPU has a CPU generator, which has no offset ("CPU Generator does not use
    offset"), and the engine dies. So on the CPU chunked prefill is off and a step's token budget
    holds the longest prompt. Measured: 64 prompts of 150 tokens x 8 seeded completions crash with
    vLLM's defaults and run with these."""
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(4096, max_model_len)}


def turn_seed(seed: int, turn: int) -> int:
    """The seed of a multi-turn rollout's turn `turn` (>= 1) whose first turn drew with `seed`: a
    hash, so that its low 32 bits (all torch's CPU generator keeps) differ from every other's."""
    key = f"{seed}:turn{turn}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**62 - 1)


class SamplerError(UserError):
    """The sampler failed: a vLLM server that died or hung, or a setting this engine cannot take."""


class Sampler(Protocol):
    """What the loop needs of a sampler; both samplers are also context managers (`with`)."""

    version: int  # the learner step whose weights it holds

    def generate(self, prompt_ids: list[list[int]], n: int, temperature: float | None = None,
                 max_tokens: int | list[int] | None = None, seeds: list[int] | None = None) -> Rollouts:
        """n completions of each prompt, prompt-major. `seeds` (one per prompt, `rollout_seed`):
        completion j of prompt i is drawn with seed `seeds[i] + j`; None draws from the engine's
        generator (what `sampler.reproducible=false` does). `max_tokens`: one for all, or one per
        prompt (a multi-turn rollout's remaining budget); None: `sampler.max_tokens`."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """The learner's weights, by transformers' names, as the engine's new weights."""

    def sleep(self) -> None:
        """Give the engine's GPU memory to the learner until the next `load_weights` (or do nothing)."""
