"""Group-relative advantages: each completion is scored against the other completions of its prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GroupAdvantages:
    advantages: torch.Tensor  # [P, G]; 0 where the reward was missing (NaN)
    mean: torch.Tensor  # [P]
    std: torch.Tensor  # [P], population std (ddof 0) over the group's valid rewards
    zero_std: torch.Tensor  # [P] bool: all valid rewards equal (or < 2 valid): no learning signal

    @property
    def frac_zero_std(self) -> float:
        return self.zero_std.float().mean().item()


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> GroupAdvantages:
    """`(r - mean) / (std + eps)` within each row of `rewards` [P, G].

    NaN rewards (a reward function returned None) are left out of the mean and std and get
    advantage 0. `scale=False` only centres the rewards (Dr. GRPO), which removes the bias
    towards groups whose rewards barely differ.
    """
    valid = ~torch.isnan(rewards)  # [P, G]
    count = valid.sum(-1, keepdim=True).clamp_min(1)  # [P, 1]
    filled = torch.where(valid, rewards, 0.0)  # [P, G]
    mean = filled.sum(-1, keepdim=True) / count  # [P, 1]
    centred = torch.where(valid, rewards - mean, 0.0)  # [P, G]
    std = (centred.pow(2).sum(-1, keepdim=True) / count).sqrt()  # [P, 1]
    advantages = centred / (std + eps) if scale else centred  # [P, G]
    # Compare extremes rather than std == 0: the std of equal floats can round to 1e-17.
    hi = torch.where(valid, rewards, -torch.inf).amax(-1)  # [P]
    lo = torch.where(valid, rewards, torch.inf).amin(-1)  # [P]
    zero_std = (hi == lo) | (valid.sum(-1) < 2)  # [P]
    return GroupAdvantages(advantages, mean.squeeze(-1), std.squeeze(-1), zero_std)
