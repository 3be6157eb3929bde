"""Sequence packing for the learner's forward: no compute spent on padding.

A micro-batch of n rollouts is laid out as [left-padded prompt | right-padded completion], n rows
of width W = P + T. With completions of very different lengths, a third or more of those n * W
slots are padding, and every matmul of the forward and backward pays for them. Packing puts
several sequences end to end in one row (first-fit decreasing into rows of width W) with
position ids that restart at 0 for each sequence; transformers then builds a block-diagonal causal
mask from the position ids (`masking_utils.find_packed_sequence_indices`), so a token attends only
to its own sequence and each sequence computes exactly what it computes alone.

Everything here is index arithmetic on the host, from the lengths only; the learner applies the
indices to the device tensors in one gather each way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packing:
    """Where each token of an [n, W] micro-batch goes in R packed rows of width L (<= W)."""

    src: torch.Tensor  # [R, L] flat index into the micro-batch's [n * W] input ids; -1 = padding
    position_ids: torch.Tensor  # [R, L] 0, 1, ... within each sequence; padding gets its own run
    predict: torch.Tensor  # [M] flat index into [R * L] of the slot whose output predicts completion token m
    rows: torch.Tensor  # [M] row of completion token m in the micro-batch's [n, T] completion layout
    cols: torch.Tensor  # [M] column of completion token m in that layout
    real_tokens: int  # tokens fed to the model that are not padding

    @property
    def pad_frac(self) -> float:
        """Share of the packed slots that are padding."""
        return 1.0 - self.real_tokens / max(self.src.numel(), 1)

    def to(self, device: torch.device) -> Packing:
        move = {k: getattr(self, k).to(device, non_blocking=True) for k in ("src", "position_ids", "predict", "rows", "cols")}
        return Packing(**move, real_tokens=self.real_tokens)


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item indices) of total length <= capacity, longest items placed first."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, room in enumerate(free):
            if lengths[i] <= room:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


def plan(prompt_lens: torch.Tensor, completion_lens: torch.Tensor, width: int) -> Packing:
    """The packing of a micro-batch whose row i holds prompt_lens[i] prompt tokens ending at column
    P = width - max(completion_lens) and completion_lens[i] completion tokens from column P on.

    The last completion token predicts nothing, so a sequence packs p + c - 1 tokens.
    """
    p_lens, c_lens = prompt_lens.tolist(), completion_lens.tolist()  # [n] each, host
    t = max(c_lens)
    p_end = width - t  # P: the column where every completion starts
    seq = [p + c - 1 for p, c in zip(p_lens, c_lens)]
    row_w = max(max(seq), 1)  # L: the longest sequence, so no row is wider than the unpacked one
    bins = first_fit_decreasing(seq, row_w)
    rows_n = len(bins)
    src = torch.full((rows_n, row_w), -1, dtype=torch.long)
    pos = torch.zeros(rows_n, row_w, dtype=torch.long)
    predict, rows, cols = [], [], []
    for r, members in enumerate(bins):
        at = 0
        for i in members:
            p, c, n_tok = p_lens[i], c_lens[i], seq[i]
            first = i * width + p_end - p  # flat index of the sequence's first token
            src[r, at : at + n_tok] = torch.arange(first, first + n_tok)
            pos[r, at : at + n_tok] = torch.arange(n_tok)
            # Completion token k is sequence token p + k, predicted by sequence token p + k - 1.
            predict.append(torch.arange(r * row_w + at + p - 1, r * row_w + at + p - 1 + c))
            rows.append(torch.full((c,), i, dtype=torch.long))
            cols.append(torch.arange(c))
            at += n_tok
        pos[r, at:] = torch.arange(row_w - at)  # trailing padding: a run of its own
    return Packing(src, pos, torch.cat(predict), torch.cat(rows), torch.cat(cols), sum(seq))


def pack_ids(input_ids: torch.Tensor, packing: Packing, pad_id: int) -> torch.Tensor:
    """[n, W] micro-batch ids -> [R, L] packed ids (padding slots get `pad_id`)."""
    flat = input_ids.reshape(-1)  # [n * W]
    return torch.where(packing.src >= 0, flat[packing.src.clamp_min(0)], pad_id)  # [R, L]


def unpack(values: torch.Tensor, packing: Packing, n: int, t: int) -> torch.Tensor:
    """[M] per-completion-token values -> [n, T], zero where there is no completion token."""
    return values.new_zeros(n, t).index_put((packing.rows, packing.cols), values)  # [n, T]
