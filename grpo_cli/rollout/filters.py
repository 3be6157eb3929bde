"""The batch filter stage, between rewards and advantages: which scored groups the learner trains on.

A filter gets `draw`, which samples and scores B more prompts (G completions each) from the
current policy, calls it at least once, and returns every group it drew (for logging) and the
groups to train on. Pick one with `algo.batch_filter._target_`:

- KeepAll: the B groups of one draw (GRPO as in DeepSeekMath).
- SkipZeroStd: drop groups whose rewards are all equal: their advantages are 0, so they carry no
  signal and only dilute a token-mean loss.
- DynamicSampling (DAPO, Yu et al. 2025): draw again until B informative groups are collected, at
  most `max_extra_draws` extra times, and train on the first B of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from grpo_cli.algo.advantages import group_advantages
from grpo_cli.rewards import RewardResult
from grpo_cli.rollout.sampler import Rollouts


@dataclass
class ScoredGroups:
    """Groups of G scored completions, prompt-major: completion j of group i is at i * G + j."""

    prompts: list[str]  # [N] formatted prompt of each completion
    columns: dict[str, list]  # name -> [N] dataset columns, repeated per completion
    rollouts: Rollouts
    scores: RewardResult
    group_size: int

    def __len__(self) -> int:  # number of groups
        return len(self.prompts) // self.group_size

    @property
    def zero_std(self) -> torch.Tensor:
        """[groups] bool: all rewards of the group equal (or fewer than 2 valid): no signal."""
        return group_advantages(self.scores.total.view(len(self), self.group_size)).zero_std

    def select(self, groups: list[int]) -> ScoredGroups:
        idx = [g * self.group_size + j for g in groups for j in range(self.group_size)]
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        rollouts = self.rollouts.pick(idx)
        t = torch.tensor(idx, dtype=torch.long)
        scores = RewardResult(self.scores.total[t], {k: v[t] for k, v in self.scores.per_reward.items()},
                              self.scores.errors)
        return ScoredGroups(pick(self.prompts), {k: pick(v) for k, v in self.columns.items()},
                            rollouts, scores, self.group_size)

    @staticmethod
    def concat(parts: list[ScoredGroups]) -> ScoredGroups:
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        cat = lambda get: [x for p in parts for x in get(p)]  # noqa: E731
        rollouts = Rollouts.concat([p.rollouts for p in parts])
        scores = RewardResult(torch.cat([p.scores.total for p in parts]),
                              {k: torch.cat([p.scores.per_reward[k] for p in parts]) for k in first.scores.per_reward},
                              {k: sum(p.scores.errors.get(k, 0) for p in parts) for k in first.scores.errors})
        columns = {k: cat(lambda p, k=k: p.columns[k]) for k in first.columns}
        return ScoredGroups(cat(lambda p: p.prompts), columns, rollouts, scores, first.group_size)


Draw = Callable[[], ScoredGroups]


class KeepAll:
    """Train on every group of one draw."""

    def __call__(self, draw: Draw) -> tuple[ScoredGroups, ScoredGroups]:
        groups = draw()
        return groups, groups


class SkipZeroStd:
    """Train only on the groups of one draw whose rewards differ; may leave none (the step then
    only samples and logs)."""

    def __call__(self, draw: Draw) -> tuple[ScoredGroups, ScoredGroups]:
        groups = draw()
        keep = (~groups.zero_std).nonzero().flatten().tolist()
        return groups, groups.select(keep)


class DynamicSampling:
    """DAPO's dynamic sampling: draw until B informative groups, at most `max_extra_draws` more
    times; the first B informative groups are trained on (fewer when the draws run out)."""

    def __init__(self, max_extra_draws: int = 3):
        self.max_extra_draws = max_extra_draws

    def __call__(self, draw: Draw) -> tuple[ScoredGroups, ScoredGroups]:
        parts = [draw()]
        target = len(parts[0])  # B
        informative = (~parts[0].zero_std).sum().item()
        while informative < target and len(parts) <= self.max_extra_draws:
            parts.append(draw())
            informative += (~parts[-1].zero_std).sum().item()
        drawn = ScoredGroups.concat(parts)
        keep = (~drawn.zero_std).nonzero().flatten()[:target].tolist()
        return drawn, drawn.select(keep)
