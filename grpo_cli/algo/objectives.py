"""Policy objectives: the policy-gradient part of the per-token loss, one small class each.

Each takes the micro-batch's `LossInputs` and returns the per-token loss [n, T] (to be minimised)
and its token-summed statistics. Selected by `algo.objective._target_` (conf/algo/*.yaml); every
objective takes `epsilon` and `epsilon_high`, so switching `_target_` alone is enough.
"""

from __future__ import annotations

import torch

from grpo_cli.algo.loss import LossInputs, LossStats, masked_max


class ClippedSurrogate:
    """PPO's clipped surrogate per token: -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A),
    r = pi / pi_old per token (DeepSeekMath's GRPO; DAPO's clip-higher with epsilon_high > epsilon)."""

    def __init__(self, epsilon: float = 0.2, epsilon_high: float | None = None):
        self.eps_low = epsilon
        self.eps_high = epsilon if epsilon_high is None else epsilon_high

    def log_ratio(self, x: LossInputs) -> torch.Tensor:
        """log r per token, [n, T] (GSPO overrides this with one value per sequence)."""
        return x.logp - x.old_logp  # [n, T]

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, LossStats]:
        ratio = torch.exp(self.log_ratio(x))  # [n, T] or [n, 1]
        adv = x.advantages.unsqueeze(-1)  # [n, 1]
        clipped = ratio.clamp(1 - self.eps_low, 1 + self.eps_high)
        per_token = -torch.minimum(ratio * adv, clipped * adv)  # [n, T] (broadcast from [n, 1] if sequence-level)
        per_token = self.bound(per_token, adv).expand_as(x.mask)  # [n, T]
        return per_token, self.stats(ratio.detach().expand_as(x.mask), adv, x.mask)

    def bound(self, per_token: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """A further bound on the loss (dual-clip); none here."""
        return per_token

    def stats(self, ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> LossStats:
        # Clipped tokens are those whose gradient the clip removes: below the band with A < 0,
        # above it with A > 0.
        low = (ratio < 1 - self.eps_low) & (adv < 0)  # [n, T]
        high = (ratio > 1 + self.eps_high) & (adv > 0)  # [n, T]
        m = mask.bool()
        sums = {
            "clip_frac/low": (low & m).sum(),
            "clip_frac/high": (high & m).sum(),
            "clip_frac": ((low | high) & m).sum(),
            "ratio/mean": (ratio * mask).sum(),
        }
        maxes = {"ratio/max": masked_max(ratio, mask, empty=1.0)}
        return LossStats(tokens=mask.sum(), sums=sums, maxes=maxes)


class DualClip(ClippedSurrogate):
    """Dual-clip PPO (Ye et al. 2020, "Mastering Complex Control in MOBA Games"; verl's `clip_ratio_c`):
    for A < 0 the clipped surrogate's loss -r * A grows without bound as r grows, so it is also
    capped at -c * A (c > 1; 3 by default). Tokens with A >= 0 are unchanged."""

    def __init__(self, epsilon: float = 0.2, epsilon_high: float | None = None, clip_c: float = 3.0):
        super().__init__(epsilon, epsilon_high)
        if clip_c <= 1:
            raise ValueError(f"DualClip.clip_c={clip_c} must be > 1")
        self.clip_c = clip_c

    def bound(self, per_token: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        capped = torch.minimum(per_token, -self.clip_c * adv)  # [n, T]: the loss is at most -c * A
        return torch.where(adv < 0, capped, per_token)  # [n, T]

    def stats(self, ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> LossStats:
        s = super().stats(ratio, adv, mask)
        s.sums["clip_frac/dual"] = ((ratio > self.clip_c) & (adv < 0) & mask.bool()).sum()
        return s


class GSPO(ClippedSurrogate):
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"; TRL's
    `importance_sampling_level="sequence"`): one ratio per sequence, the geometric mean of its token
    ratios, s = exp(mean_t log(pi / pi_old)), clipped per sequence with its own, much narrower range
    (the paper uses epsilon 3e-4, epsilon_high 4e-4): a sequence is clipped as a whole or not at all."""

    def log_ratio(self, x: LossInputs) -> torch.Tensor:
        lengths = x.mask.sum(-1, keepdim=True).clamp_min(1)  # [n, 1]
        return ((x.logp - x.old_logp) * x.mask).sum(-1, keepdim=True) / lengths  # [n, 1]
