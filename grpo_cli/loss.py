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
    """Token-summed metrics of one micro-batch, so that micro-batches add up exactly."""

    tokens: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)
    maxes: dict[str, float] = field(default_factory=dict)

    def add(self, other: LossStats) -> None:
        self.tokens += other.tokens
        for k, v in other.sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        for k, v in other.maxes.items():
            self.maxes[k] = max(self.maxes.get(k, -float("inf")), v)

    def means(self) -> dict[str, float]:
        out = {k: v / max(self.tokens, 1.0) for k, v in self.sums.items()}
        return out | self.maxes


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
            "clip_frac/low": (low & m).sum().item(),
            "clip_frac/high": (high & m).sum().item(),
            "clip_frac": ((low | high) & m).sum().item(),
            "ratio/mean": (ratio * mask).sum().item(),
        }
        maxes = {"ratio/max": ratio[m].max().item() if m.any() else 1.0}
        if kl is not None:
            kl = kl.detach()
            sums["kl/mean"] = (kl * mask).sum().item()
            maxes["kl/max"] = kl[m].max().item() if m.any() else 0.0
        return LossStats(tokens=mask.sum().item(), sums=sums, maxes=maxes)
