"""Group-relative advantages: each completion is scored against the other completions of its prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GroupAdvantages:
    advantages: torch.Tensor  # [P, G]; 0 where the reward was missing (NaN)
    mean: torch.Tensor  # [P]
    std: torch.Tensor  # [P], std (ddof 0 unless asked) over the group's valid rewards
    zero_std: torch.Tensor  # [P] bool: all valid rewards equal (or < 2 valid): no learning signal

    @property
    def frac_zero_std(self) -> float:
        return self.zero_std.float().mean().item()


def _std(centred: torch.Tensor, valid: torch.Tensor, ddof: int, dim=-1) -> torch.Tensor:
    """std of the valid entries from their deviations `centred` (0 where invalid), over `dim`."""
    count = valid.sum(dim, keepdim=True)
    return (centred.pow(2).sum(dim, keepdim=True) / (count - ddof).clamp_min(1)).sqrt()


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True, ddof: int = 0) -> GroupAdvantages:
    """`(r - mean) / (std + eps)` within each row of `rewards` [P, G].

    NaN rewards (a reward function returned None) are left out of the mean and std and get
    advantage 0. `scale=False` only centres the rewards (Dr. GRPO), which removes the bias
    towards groups whose rewards barely differ. `ddof=1` takes Bessel's std (TRL's).
    """
    valid = ~torch.isnan(rewards)  # [P, G]
    count = valid.sum(-1, keepdim=True).clamp_min(1)  # [P, 1]
    filled = torch.where(valid, rewards, 0.0)  # [P, G]
    mean = filled.sum(-1, keepdim=True) / count  # [P, 1]
    centred = torch.where(valid, rewards - mean, 0.0)  # [P, G]
    std = _std(centred, valid, ddof)  # [P, 1]
    advantages = centred / (std + eps) if scale else centred  # [P, G]
    # Compare extremes rather than std == 0: the std of equal floats can round to 1e-17.
    hi = torch.where(valid, rewards, -torch.inf).amax(-1)  # [P]
    lo = torch.where(valid, rewards, torch.inf).amin(-1)  # [P]
    zero_std = (hi == lo) | (valid.sum(-1) < 2)  # [P]
    return GroupAdvantages(advantages, mean.squeeze(-1), std.squeeze(-1), zero_std)


def batch_scaled(rewards: torch.Tensor, eps: float, ddof: int) -> torch.Tensor:
    """Centred within each group, divided by the std of the whole batch (PPO-Lite, arXiv 2508.08221;
    TRL's `scale_rewards="batch"`): [P, G] -> [P, G]."""
    centred = group_advantages(rewards, eps, scale=False).advantages  # [P, G]
    valid = ~torch.isnan(rewards)  # [P, G]
    mean = torch.where(valid, rewards, 0.0).sum() / valid.sum().clamp_min(1)  # 0-dim
    std = _std(torch.where(valid, rewards - mean, 0.0).flatten(), valid.flatten(), ddof)  # [1]
    return centred / (std + eps)  # [P, G]


class Advantages:
    """Rewards -> advantages as `algo` says: `scale_rewards` (group, batch, none), `adv_std_ddof`
    (0 population, 1 Bessel) and `reward_aggregation` (sum_then_normalize, normalize_then_sum)."""

    def __init__(self, weights: dict[str, float], eps: float = 1e-4, scale: str = "group", ddof: int = 0,
                 aggregation: str = "sum_then_normalize"):
        self.weights, self.eps, self.scale, self.ddof, self.aggregation = weights, eps, scale, ddof, aggregation

    @classmethod
    def from_config(cls, algo, reward_weights: dict[str, float]) -> Advantages:
        return cls(reward_weights, algo.adv_eps, algo.scale_rewards, algo.adv_std_ddof, algo.reward_aggregation)

    def __call__(self, scores, group_size: int) -> torch.Tensor:
        """`scores` (a RewardResult of [P * G] completions, G = `group_size`) -> advantages [P * G]."""
        if self.aggregation == "normalize_then_sum":
            return self.normalize_then_sum(scores.per_reward, group_size)
        total = scores.total.view(-1, group_size)  # [P, G]
        if self.scale == "batch":
            return batch_scaled(total, self.eps, self.ddof).flatten()
        return group_advantages(total, self.eps, self.scale == "group", self.ddof).advantages.flatten()

    def normalize_then_sum(self, per_reward: dict[str, torch.Tensor], group_size: int) -> torch.Tensor:
        """GDPO (arXiv 2601.05242): each reward normalised within its group, weighted and summed, the
        sum normalised over the batch: [P * G]. A completion no reward applied to gets 0."""
        parts = [group_advantages(per_reward[name].view(-1, group_size), self.eps, True, self.ddof).advantages
                 * self.weights[name] for name in self.weights]  # each [P, G]; 0 where that reward was None
        none = torch.stack([torch.isnan(per_reward[name]) for name in self.weights]).all(0)  # [P * G]
        summed = torch.stack(parts).sum(0).flatten().masked_fill(none, torch.nan)  # [P * G]
        valid = ~none
        mean = torch.where(valid, summed, 0.0).sum() / valid.sum().clamp_min(1)  # 0-dim
        centred = torch.where(valid, summed - mean, 0.0)  # [P * G]
        return centred / (_std(centred, valid, self.ddof) + self.eps)  # [P * G]
