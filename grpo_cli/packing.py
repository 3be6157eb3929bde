"""Sequence packing for the learner's forward: no compute spent on padding, nor on repeated prompts.

A micro-batch of n rollouts is laid out as [left-padded prompt | right-padded completion], n rows
of width W = P + T. With completions of very different lengths, a third or more of those n * W
slots are padding, and every matmul of the forward and backward pays for them. Packing puts
several sequences end to end in one row (first-fit decreasing) with position ids that restart at
0 for each sequence, and an explicit [R, 1, L, L] attention mask built from this plan, so a token
attends only to its own sequence and each sequence computes exactly what it computes alone.

The G completions of a prompt share that prompt. With `groups` (rows with equal prompts), a
prompt is fed once and its completions follow it in the same row, each with positions continuing
from the prompt's and a mask that lets it see the prompt and its own tokens only (a tree of
sequences): the same numbers as G separate sequences, the prompt's forward and backward paid
once. On the demo (11-token prompts, ~3-token completions) that is ~3x fewer tokens.

Everything here is index arithmetic on the host, from the lengths only (nothing waits for the
device, and the forward has no data-dependent branch); the learner applies the indices to the
device tensors in one gather each way, and the mask is built on the device from two [R, L] maps.
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
    segment: torch.Tensor  # [R, L] which run of the row a slot is in (a prompt and its completions, or padding)
    branch: torch.Tensor  # [R, L] 0 on a shared prompt and on padding, k + 1 on the segment's k-th completion
    real_tokens: int  # tokens fed to the model that are not padding

    @property
    def pad_frac(self) -> float:
        """Share of the packed slots that are padding."""
        return 1.0 - self.real_tokens / max(self.src.numel(), 1)

    def to(self, device: torch.device) -> Packing:
        move = {k: getattr(self, k).to(device, non_blocking=True)
                for k in ("src", "position_ids", "predict", "rows", "cols", "segment", "branch")}
        return Packing(**move, real_tokens=self.real_tokens)

    def attention_mask(self) -> torch.Tensor:
        """[R, 1, L, L] bool, True where query slot q may attend to key slot k: same segment, k <= q,
        and k on the shared prompt or on q's own completion. Built where the plan lives (the device)."""
        width = self.segment.shape[1]
        slot = torch.arange(width, device=self.segment.device)
        causal = slot[:, None] >= slot[None, :]  # [L, L]
        same = self.segment[:, :, None] == self.segment[:, None, :]  # [R, L, L]
        seen = (self.branch[:, None, :] == 0) | (self.branch[:, :, None] == self.branch[:, None, :])  # [R, L, L]
        return (causal & same & seen)[:, None]  # [R, 1, L, L]


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


def plan(prompt_lens: torch.Tensor, completion_lens: torch.Tensor, width: int,
         groups: torch.Tensor | None = None, share_width: int = 4) -> Packing:
    """The packing of a micro-batch whose row i holds prompt_lens[i] prompt tokens ending at column
    P = width - max(completion_lens) and completion_lens[i] completion tokens from column P on.

    `groups` [n] (host): rows with equal ids hold the same prompt, which is then fed once per
    segment; a segment takes completions until it would pass `share_width` x the longest sequence
    (a row's attention costs its width squared). None: every row is a segment of its own.
    The last completion token predicts nothing, so a sequence packs p + c - 1 tokens.
    """
    p_lens, c_lens = prompt_lens.tolist(), completion_lens.tolist()  # [n] each, host
    t = max(c_lens)
    p_end = width - t  # P: the column where every completion starts
    seq = [p + c - 1 for p, c in zip(p_lens, c_lens)]
    longest = max(max(seq), 1)
    # Segments: (prompt length, rows sharing that prompt); a prompt is the same tokens in each row.
    segments: list[tuple[int, list[int]]] = []
    open_seg: dict[int, int] = {}  # group id -> index of its segment that still takes completions
    for i, g in enumerate(groups.tolist() if groups is not None else range(len(seq))):
        s = open_seg.get(g)
        if s is not None and seg_len(segments[s], c_lens) + c_lens[i] - 1 <= share_width * longest:
            segments[s][1].append(i)
        else:
            open_seg[g] = len(segments)
            segments.append((p_lens[i], [i]))
    lengths = [seg_len(sg, c_lens) for sg in segments]
    row_w = max(lengths)  # L: the longest segment
    bins = first_fit_decreasing(lengths, row_w)
    rows_n = len(bins)
    src = torch.full((rows_n, row_w), -1, dtype=torch.long)
    pos = torch.zeros(rows_n, row_w, dtype=torch.long)
    segment = torch.zeros(rows_n, row_w, dtype=torch.long)
    branch = torch.zeros(rows_n, row_w, dtype=torch.long)
    predict, rows, cols = [], [], []
    for r, members in enumerate(bins):
        at = 0
        for s_id, s in enumerate(members):
            p, seq_rows = segments[s]
            first = seq_rows[0] * width + p_end - p  # flat index of the shared prompt's first token
            src[r, at : at + p] = torch.arange(first, first + p)
            pos[r, at : at + p] = torch.arange(p)
            segment[r, at : at + lengths[s]] = s_id
            last_prompt = r * row_w + at + p - 1  # the slot predicting every first completion token
            at += p
            for k, i in enumerate(seq_rows):
                c = c_lens[i]
                # Completion token j (j >= 1) is predicted by the slot holding token j - 1.
                start = i * width + p_end  # flat index of this row's first completion token
                src[r, at : at + c - 1] = torch.arange(start, start + c - 1)
                pos[r, at : at + c - 1] = torch.arange(p, p + c - 1)
                branch[r, at : at + c - 1] = k + 1
                predict.append(torch.cat([torch.tensor([last_prompt]), torch.arange(r * row_w + at, r * row_w + at + c - 1)]))
                rows.append(torch.full((c,), i, dtype=torch.long))
                cols.append(torch.arange(c))
                at += c - 1
        pos[r, at:] = torch.arange(row_w - at)  # trailing padding: a run of its own
        segment[r, at:] = len(members)
    return Packing(src, pos, torch.cat(predict), torch.cat(rows), torch.cat(cols), segment, branch, sum(lengths))


def seg_len(segment: tuple[int, list[int]], c_lens: list[int]) -> int:
    """Tokens a segment feeds: its prompt once, then each completion but its last token."""
    p, seq_rows = segment
    return p + sum(c_lens[i] - 1 for i in seq_rows)


def pack_ids(input_ids: torch.Tensor, packing: Packing, pad_id: int) -> torch.Tensor:
    """[n, W] micro-batch ids -> [R, L] packed ids (padding slots get `pad_id`)."""
    flat = input_ids.reshape(-1)  # [n * W]
    return torch.where(packing.src >= 0, flat[packing.src.clamp_min(0)], pad_id)  # [R, L]


def unpack(values: torch.Tensor, packing: Packing, n: int, t: int) -> torch.Tensor:
    """[M] per-completion-token values -> [n, T], zero where there is no completion token."""
    return values.new_zeros(n, t).index_put((packing.rows, packing.cols), values)  # [n, T]
