"""One step's numbers, assembled once: rewards and rollouts of everything drawn, advantages of the
groups trained on, the learner's metrics, and where the step's time went.

Under torchrun every value is over every rank (`dist.cat` / `dist.sum` / `dist.max` join them), so
rank 0 logs the global numbers."""

from __future__ import annotations

import time

import torch


class StepClock:
    """Seconds of each part of a step: `lap(name)` closes the part that started at the last lap."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.last = now - self.last, now

    @property
    def total(self) -> float:
        return self.last - self.start


def step_metrics(dist, rollouts, advantages: torch.Tensor, learner_metrics: dict, clock: StepClock,
                 extra: dict) -> dict[str, float | torch.Tensor]:
    """The step's metrics. `rollouts`: the step's StepRollouts (everything drawn, the groups trained
    on, sampling and reward seconds); `advantages`: [n*G] of the groups trained on; `extra`:
    the loop's own numbers (beta, bad steps, epoch, reference refresh events)."""
    drawn = rollouts.drawn
    everything = dist.cat(drawn.scores.total)  # [every rank's B*G]
    trained = dist.cat(advantages)
    lengths = dist.cat(torch.tensor([len(c) for c in drawn.rollouts.completion_ids], dtype=torch.float32))
    truncated = dist.cat(torch.tensor(drawn.rollouts.truncated, dtype=torch.float32))
    G = drawn.group_size
    return {
        "reward/mean": torch.nanmean(everything).item(),
        "reward/std": everything[~everything.isnan()].std().item() if everything.numel() > 1 else 0.0,
        **{f"reward/{k}/mean": torch.nanmean(dist.cat(v)).item() for k, v in drawn.scores.per_reward.items()},
        **{f"reward/{k}/errors": int(dist.max(torch.tensor(v))) for k, v in drawn.scores.errors.items()},
        "advantage/mean": trained.mean().item() if len(trained) else 0.0,
        "advantage/std": trained.std().item() if len(trained) else 0.0,
        "frac_zero_std": dist.cat(drawn.zero_std.float()).mean().item(),
        "filter/groups_drawn": int(dist.sum(torch.tensor(len(drawn)))),
        "filter/groups_trained": len(trained) // G,
        "completion_len/mean": lengths.mean().item(),
        "completion_len/max": lengths.max().item(),
        "truncated_frac": truncated.mean().item(),
        **learner_metrics,
        "time/sample_s": rollouts.sample_s,
        "time/reward_s": rollouts.reward_s,
        "time/learner_s": clock.laps["learner"],
        "time/sync_s": clock.laps["sync"],
        "time/step_s": clock.total,
        "tokens_per_s": lengths.sum().item() / rollouts.sample_s,  # every rank's tokens over this rank's time
        **tool_metrics(dist, drawn.rollouts.tools),
        **rollouts.info,  # rollout/version, rollout/staleness: the weights that sampled this step
        **extra,
    }


def tool_metrics(dist, use) -> dict[str, float]:
    """What the tools did this step, over every rank (`use`: a ToolUse, None without tools)."""
    if use is None:
        return {}
    return type(use).concat(dist.gather(use)).metrics()
