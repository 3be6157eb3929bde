"""The GRPO objective per token: clipped surrogate plus beta * k3 KL to the reference."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = ref - logp.

    Unbiased, always >= 0, and 0 exactly where the two log-probs agree.
    """
    d = ref_logp - logp  # [N, T]
    return torch.exp(d) - d - 1  # [N, T]


@dataclass
class LossStats:
    """Token-summed metrics of micro-batches, as 0-dim tensors on the learner's device.

    Sums (not means) so that micro-batches add up exactly; tensors (not floats) so that nothing
    waits for the device until the step's metrics are copied to the host, once.
    """

    tokens: torch.Tensor | float = 0.0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    maxes: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, other: LossStats) -> None:
        self.tokens = self.tokens + other.tokens
        for k, v in other.sums.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        for k, v in other.maxes.items():
            self.maxes[k] = torch.maximum(self.maxes[k], v) if k in self.maxes else v

    def means(self) -> dict[str, torch.Tensor]:
        tokens = torch.as_tensor(self.tokens).clamp_min(1.0)
        return {k: v / tokens for k, v in self.sums.items()} | self.maxes


class GRPOLoss:
    """-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * k3, per token."""

    def __init__(self, epsilon: float, epsilon_high: float | None, beta: float):
        self.eps_low = epsilon
        self.eps_high = epsilon if epsilon_high is None else epsilon_high
        self.beta = beta

    def __call__(
        self,
        logp: torch.Tensor,  # [N, T] fp32, current policy, with grad
        old_logp: torch.Tensor,  # [N, T] pi_old (the sampling policy), no grad
        ref_logp: torch.Tensor | None,  # [N, T] frozen reference, or None when beta == 0
        advantages: torch.Tensor,  # [N]
        mask: torch.Tensor,  # [N, T] 1.0 on completion tokens
        weights: torch.Tensor,  # [N, T] from an Aggregation
    ) -> tuple[torch.Tensor, LossStats]:
        ratio = torch.exp(logp - old_logp)  # [N, T]
        adv = advantages.unsqueeze(-1)  # [N, 1]
        clipped = ratio.clamp(1 - self.eps_low, 1 + self.eps_high)  # [N, T]
        per_token = -torch.minimum(ratio * adv, clipped * adv)  # [N, T]
        kl = None
        if self.beta > 0:
            kl = kl_k3(logp, ref_logp)  # [N, T]
            per_token = per_token + self.beta * kl
        loss = (per_token * weights).sum()
        return loss, self._stats(ratio.detach(), adv, kl, mask)

    def _stats(self, ratio, adv, kl, mask) -> LossStats:
        # Clipped tokens are those whose gradient the clip removes: below the band with A < 0,
        # above it with A > 0.
        low = (ratio < 1 - self.eps_low) & (adv < 0)  # [N, T]
        high = (ratio > 1 + self.eps_high) & (adv > 0)  # [N, T]
        m = mask.bool()
        sums = {
            "clip_frac/low": (low & m).sum(),
            "clip_frac/high": (high & m).sum(),
            "clip_frac": ((low | high) & m).sum(),
            "ratio/mean": (ratio * mask).sum(),
        }
        # Masked maxes without boolean indexing (which waits for the device); ratios are > 0 and
        # KL >= 0, so 0 fills the masked slots; no token at all gives ratio 1.
        ratio_max = torch.where(m, ratio, 0.0).amax()
        maxes = {"ratio/max": torch.where(m.any(), ratio_max, torch.ones_like(ratio_max))}
        if kl is not None:
            kl = kl.detach()
            sums["kl/mean"] = (kl * mask).sum()
            maxes["kl/max"] = torch.where(m, kl, 0.0).amax()
        return LossStats(tokens=mask.sum(), sums=sums, maxes=maxes)
