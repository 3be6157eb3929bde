"""Greedy accuracy (and pass@k) on held-out prompts, with the run's engine and reward functions.

`Evaluator` decides itself when it is due (before training, every `eval.every` steps, at the end);
under torchrun each rank evaluates its share of the rows and the metrics are joined."""

from __future__ import annotations

import torch

from grpo_cli.rewards import Rewards
from grpo_cli.rollout.generation import Generation
from grpo_cli.rollout.prompts import PromptBatch, as_batch
from grpo_cli.rollout.sampler import rollout_seed


def evaluate(
    generate: Generation, batch: PromptBatch, rewards: Rewards, accuracy_reward: str, pass_k: int,
    temperature: float, max_tokens: int | None, seeds: list[int] | None = None,
) -> dict[str, float]:
    """`eval/accuracy`: share of prompts whose greedy completion scores 1.0 on `accuracy_reward`;
    pass@k from k samples of each prompt, drawn with `seeds` (one per prompt, `rollout_seed`)."""
    greedy = generate(batch, 1, temperature=0.0, max_tokens=max_tokens)
    scores = rewards(batch, greedy)
    correct = scores.per_reward[accuracy_reward] == 1.0  # [P]
    out = {
        "eval/accuracy": correct.float().mean().item(),
        "eval/reward": torch.nanmean(scores.total).item(),
        "eval/completion_len": greedy.num_tokens / len(greedy.completion_ids),
    }
    if greedy.tools is not None:  # multi-turn: how often the greedy answers used a tool
        out["eval/tools/used_frac"] = sum(greedy.tools.used) / len(greedy.tools.used)
        out["eval/tools/turns_mean"] = sum(greedy.tools.turns) / len(greedy.tools.turns)
    if pass_k > 0:
        sampled = generate(batch, pass_k, seeds, temperature=temperature, max_tokens=max_tokens)
        k_scores = rewards(batch.repeat(pass_k), sampled)
        hits = (k_scores.per_reward[accuracy_reward] == 1.0).view(-1, pass_k)  # [P, k]
        out[f"eval/pass@{pass_k}"] = hits.any(-1).float().mean().item()
    return out


class Evaluator:
    """Held-out evaluation of the run: `rows` None means none (every call returns {})."""

    def __init__(self, cfg, rows, fmt, generate: Generation, rewards: Rewards, temperature: float, logger, dist,
                 seed: int = 0):
        """`generate`: the run's Generation (one turn, or turns with tools), on the run's sampler."""
        self.cfg, self.generate, self.rewards, self.temperature = cfg, generate, rewards, temperature
        self.logger, self.dist, self.seed = logger, dist, seed
        share = dist.share_range(len(rows)) if rows is not None else []  # this rank's share, by global index
        self.batch = as_batch(rows.select(share), fmt, list(share)) if rows is not None else None
        self.rows = len(self.batch.prompts) if rows is not None else 0  # this rank's
        self.first: dict[str, float] = {}  # the evaluation before training (kept by checkpoints)
        self.last: dict[str, float] = {}

    def run(self, step: int) -> dict[str, float]:
        """Evaluate now and log it at `step`."""
        if self.batch is None:
            return {}
        # pass@k samples seeded as rollouts are, from (seed, step, the row's global index).
        seeds = [rollout_seed(self.seed, step, i, evaluation=True) for i in self.batch.index]
        metrics = evaluate(self.generate, self.batch, self.rewards, self.rewards.accuracy, self.cfg.pass_k,
                           self.temperature, self.cfg.max_tokens, seeds) if self.rows else {}
        metrics = self.dist.mean(metrics, self.rows)  # every rank's, weighted by its rows
        self.logger.log(step, metrics)
        return metrics

    def before_training(self, resumed_first: dict[str, float] | None) -> None:
        """The evaluation at step 0, or the one a resumed run's checkpoint kept."""
        self.first = resumed_first if resumed_first is not None else self.run(0)

    def maybe_run(self, step: int, total_steps: int) -> None:
        """Every `eval.every` steps during training (the last step is evaluated by `final`)."""
        if self.cfg.every and step % self.cfg.every == 0 and step < total_steps:
            self.run(step)

    def final(self, total_steps: int) -> dict[str, float]:
        """The evaluation after training."""
        self.last = self.run(total_steps)
        return self.last

    def print_summary(self) -> None:
        """The console's table of the evaluation before and after training (once the logs are closed)."""
        if self.last:
            self.logger.print_table("held-out evaluation", {f"before {k}": v for k, v in self.first.items()}
                                    | {f"after {k}": v for k, v in self.last.items()})
