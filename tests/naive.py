"""Textbook references the tests compare the product's optimised paths against."""

from __future__ import annotations

import torch


def naive_token_logprobs(hidden, lm_head, targets, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same numbers the textbook way (full fp32 logits); the reference for the chunked path."""
    logits = lm_head(hidden).float() / temperature  # [..., V]
    log_p = logits.log_softmax(-1)  # [..., V]
    return log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)
