"""Policy masks: which tokens or sequences the policy term learns from, one small class each.

A mask takes the micro-batch's `LossInputs` and returns a 0/1 multiplier of the policy term,
[n, T] or [n, 1], with its token-summed statistics. The KL and entropy terms are not masked.
Selected by name under `algo.policy_masks` (conf/algo/policy_masks/*.yaml); several multiply.
"""

from __future__ import annotations

import torch

from grpo_cli.algo.loss import LossInputs, LossStats


class TopEntropyMask:
    """Beyond the 80/20 Rule (Wang et al. 2025, arXiv 2506.01939; TRL's `top_entropy_quantile`):
    the policy gradient only on the `rho` share of tokens with the highest entropy, the "forking"
    tokens where the reasoning branches; the paper keeps the top 20 %. The threshold is the (1 - rho)
    quantile (linear interpolation, torch.quantile) of the micro-batch's loss tokens, as TRL takes it
    per micro-batch (TRL also gathers it over ranks; here each rank takes its own)."""

    def __init__(self, rho: float = 0.2):
        if not 0 < rho <= 1:
            raise ValueError(f"TopEntropyMask.rho={rho} must be in (0, 1]")
        self.rho = rho

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, LossStats]:
        if x.entropy is None:
            raise ValueError("TopEntropyMask needs the per-token entropy in LossInputs")
        entropy = x.entropy.detach()  # [n, T]
        m = x.mask.bool()  # [n, T]
        values = entropy[m]  # [k] the loss tokens' entropies (one host sync: the count)
        if values.numel() == 0:
            return torch.zeros_like(x.mask), LossStats(tokens=x.mask.sum())
        threshold = torch.quantile(values.float(), 1 - self.rho)  # 0-dim
        keep = ((entropy * x.mask >= threshold) & m).to(x.mask.dtype)  # [n, T]
        return keep, LossStats(tokens=x.mask.sum(), sums={"mask/entropy_kept": keep.sum()})


class OffPolicySequenceMask:
    """Off-policy sequence masking (DeepSeek-V3.2, arXiv 2512.02556, eq. 9; TRL's
    `off_policy_mask_threshold`): a completion with a negative advantage whose mean per-token
    KL(pi_sampler || pi), estimated as mean_t(log pi_sampler - log pi), exceeds `delta` is left out
    of the policy term: learning from its own mistakes drawn by a policy this far away hurts more
    than it helps. Completions with A >= 0 always stay."""

    def __init__(self, delta: float = 0.5):
        if delta <= 0:
            raise ValueError(f"OffPolicySequenceMask.delta={delta} must be > 0")
        self.delta = delta

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, LossStats]:
        kl = torch.nan_to_num(x.sampler_logp - x.logp.detach(), nan=0.0)  # [n, T]
        seq_kl = (kl * x.mask).sum(-1, keepdim=True) / x.mask.sum(-1, keepdim=True).clamp_min(1.0)  # [n, 1]
        adv = x.advantages if x.advantages.dim() == 2 else x.advantages.unsqueeze(-1)  # [n, 1] or [n, T]
        keep = ((adv >= 0) | (seq_kl <= self.delta)).to(x.mask.dtype)  # [n, 1] or [n, T]
        dropped = ((1 - keep) * x.mask).sum()
        return keep, LossStats(tokens=x.mask.sum(), sums={"mask/off_policy_dropped": dropped})
