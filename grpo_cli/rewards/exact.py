"""Reward for the synthetic arithmetic task (prompts "a+b=", column `answer`)."""

from __future__ import annotations

from grpo_cli.rewards import completion_text


def exact_answer(prompts: list[str], completions: list[str], answer: list, **_) -> list[float]:
    """1.0 when the completion starts with the correct number (and the number ends there)."""
    scores = []
    for completion, gold in zip(completions, answer):
        text, gold = completion_text(completion).strip(), str(gold)
        rest = text[len(gold):]
        scores.append(1.0 if text.startswith(gold) and not rest[:1].isdigit() else 0.0)
    return scores
