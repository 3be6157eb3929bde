"""Greedy accuracy (and pass@k) on held-out prompts, with the run's engine and reward functions."""

from __future__ import annotations

import torch

from grpo_cli.rewards import Rewards
from grpo_cli.rollout.prompts import PromptBatch
from grpo_cli.rollout.sampler import VLLMSampler


def evaluate(
    sampler: VLLMSampler, batch: PromptBatch, prompt_ids: list[list[int]], rewards: Rewards,
    accuracy_reward: str, pass_k: int, temperature: float, max_tokens: int | None,
) -> dict[str, float]:
    """`eval/accuracy`: share of prompts whose greedy completion scores 1.0 on `accuracy_reward`."""
    greedy = sampler.generate(prompt_ids, n=1, temperature=0.0, max_tokens=max_tokens)
    scores = rewards(batch, greedy)
    correct = scores.per_reward[accuracy_reward] == 1.0  # [P]
    out = {
        "eval/accuracy": correct.float().mean().item(),
        "eval/reward": torch.nanmean(scores.total).item(),
        "eval/completion_len": greedy.num_tokens / len(greedy.completion_ids),
    }
    if pass_k > 0:
        sampled = sampler.generate(prompt_ids, n=pass_k, temperature=temperature, max_tokens=max_tokens)
        k_scores = rewards(batch.repeat(pass_k), sampled)
        hits = (k_scores.per_reward[accuracy_reward] == 1.0).view(-1, pass_k)  # [P, k]
        out[f"eval/pass@{pass_k}"] = hits.any(-1).float().mean().item()
    return out
