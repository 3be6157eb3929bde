"""How per-token losses become one scalar.

Each aggregation turns the completion mask of one optimiser batch into per-token weights `w`
so that `loss = (per_token_loss * w).sum()`. Computing `w` once for the whole optimiser batch
and slicing it per micro-batch makes gradient accumulation exact: the sum over micro-batches
is the loss of the whole batch, whatever the micro-batch size. A new aggregation is a new small
class here (or anywhere importable) plus a `_target_` in an `algo` YAML.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Aggregation(Protocol):
    def weights(self, mask: torch.Tensor) -> torch.Tensor:
        """Per-token weights [N, T] from the completion mask [N, T] (1 = completion token)."""
        ...


class SequenceMean:
    """Mean over each sequence's tokens, then over sequences (DeepSeekMath's GRPO objective)."""

    def weights(self, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(-1, keepdim=True).clamp_min(1)  # [N, 1]
        return mask / lengths / mask.shape[0]  # [N, T]


class SequenceSum:
    """Sum over each sequence's tokens, mean over sequences: a sequence's loss counts with its
    length (LUSPO, arXiv 2602.05261, with GSPO's sequence ratio: TRL's `loss_type="luspo"`), so the
    length bias of averaging within each sequence goes away without a constant like Dr. GRPO's."""

    def weights(self, mask: torch.Tensor) -> torch.Tensor:
        return mask / mask.shape[0]  # [N, T]


class TokenMean:
    """Mean over every completion token of the batch (DAPO): long answers weigh more."""

    def weights(self, mask: torch.Tensor) -> torch.Tensor:
        return mask / mask.sum().clamp_min(1)  # [N, T]


class ConstantNormalizer:
    """Each sequence's token sum divided by a constant `max_tokens`, averaged over sequences (Dr. GRPO).

    Equal to the batch's token sum / (N * max_tokens): no length normalisation, so no bias
    towards long wrong answers or short right ones.
    """

    def __init__(self, max_tokens: int):
        if max_tokens <= 0:
            raise ValueError(f"ConstantNormalizer.max_tokens={max_tokens} must be > 0")
        self.max_tokens = max_tokens

    def weights(self, mask: torch.Tensor) -> torch.Tensor:
        return mask / (mask.shape[0] * self.max_tokens)  # [N, T]
