"""Importance-sampling correction for the train/inference mismatch.

The sampler (vLLM, often bf16 with its own kernels) and the learner (fp32) give the same tokens
slightly different log-probs, so the rollouts come from pi_sampler, not from the learner's
pi_old. A correction weights each token's policy term by w = pi_old / pi_sampler (per token, or
per sequence as exp(sum of the tokens' log-ratios)), truncated or masked where it leaves
[clip_min, clip_max], as TRL's `vllm_importance_sampling_mode` (TRL 1.16: token_truncate,
token_mask, sequence_truncate, sequence_mask; C_max 3, C_min none by default). The weights carry
no gradient; the KL and entropy terms are not weighted. Selected by `algo.is_correction._target_`.
"""

from __future__ import annotations

import torch

from grpo_cli.algo.loss import LossInputs, LossStats

LEVELS = ("token", "sequence")


class NoCorrection:
    """Treat the rollouts as samples of pi_old (the learner's log-probs of the sampled tokens)."""

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, LossStats]:
        return torch.ones_like(x.mask), LossStats(tokens=x.mask.sum())  # [n, T]


class _ImportanceWeights:
    def __init__(self, level: str, clip_max: float | None = 3.0, clip_min: float | None = None):
        if level not in LEVELS:
            raise ValueError(f"{type(self).__name__}.level={level!r} is invalid: use one of {', '.join(LEVELS)}")
        if clip_max is not None and clip_min is not None and not clip_min < clip_max:
            raise ValueError(f"{type(self).__name__}: clip_min={clip_min} must be < clip_max={clip_max}")
        self.level = level
        self.clip_max = torch.inf if clip_max is None else clip_max
        self.clip_min = 0.0 if clip_min is None else clip_min

    def ratio(self, x: LossInputs) -> torch.Tensor:
        """pi_old / pi_sampler: [n, T] per token, or [n, 1] per sequence."""
        diff = (x.old_logp - x.sampler_logp).detach() * x.mask  # [n, T]
        if self.level == "sequence":
            diff = diff.sum(-1, keepdim=True)  # [n, 1]
        return torch.exp(diff)

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, LossStats]:
        ratio = self.ratio(x)  # [n, T] or [n, 1]
        outside = (ratio > self.clip_max) | (ratio < self.clip_min)  # like ratio
        weight = self.apply(ratio, outside).expand_as(x.mask)  # [n, T]
        key = f"is/{self.action}_frac"  # fraction of loss tokens whose weight was capped or masked
        sums = {key: (outside * x.mask).sum(), "is/ratio/mean": (ratio * x.mask).sum()}
        return weight, LossStats(tokens=x.mask.sum(), sums=sums)


class TruncatedIS(_ImportanceWeights):
    """Truncated IS (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
    training"): w = clamp(ratio, clip_min, clip_max). Token level by default (TRL's `token_truncate`)."""

    action = "capped"

    def __init__(self, level: str = "token", clip_max: float | None = 3.0, clip_min: float | None = None):
        super().__init__(level, clip_max, clip_min)

    def apply(self, ratio: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        return ratio.clamp(self.clip_min, self.clip_max)


class MaskedIS(_ImportanceWeights):
    """Masked IS: w = ratio inside [clip_min, clip_max], 0 outside, so a sequence (or token) whose
    ratio leaves the range drops out of the policy term. Sequence level by default, TRL's default
    `sequence_mask` with C_max = 3; set clip_min (e.g. 1/3) for a two-sided mask (IcePop)."""

    action = "masked"

    def __init__(self, level: str = "sequence", clip_max: float | None = 3.0, clip_min: float | None = None):
        super().__init__(level, clip_max, clip_min)

    def apply(self, ratio: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        return ratio.masked_fill(outside, 0.0)
