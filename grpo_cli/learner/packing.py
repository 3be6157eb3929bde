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


def plan(prompt_lens: torch.Tensor, completion_lens: torch.Tensor, width: int,
         groups: torch.Tensor | None = None, attn_cost: float = 0.0) -> Packing:
    """The packing of a micro-batch whose row i holds prompt_lens[i] prompt tokens ending at column
    P = width - max(completion_lens) and completion_lens[i] completion tokens from column P on.

    `groups` [n] (host): rows with equal ids hold the same prompt, fed once per packed row. Wider
    rows let more completions share a prompt but cost attention (R * L^2 query-key pairs): rows of
    1, 2 and 4 x the longest sequence are tried and the cheapest kept, counting a pair as
    `attn_cost` token slots. None: every sequence on its own, rows of the longest sequence.
    """
    p_lens, c_lens = prompt_lens.tolist(), completion_lens.tolist()  # [n] each, host
    seq = [p + c - 1 for p, c in zip(p_lens, c_lens)]  # the last completion token predicts nothing
    ids = groups.tolist() if groups is not None else list(range(len(seq)))
    longest = max(max(seq), 1)
    options = [_rows(seq, c_lens, ids, k * longest) for k in ((1, 2, 4) if groups is not None else (1,))]
    rows, row_w = min(options, key=lambda o: len(o[0]) * o[1] * (1 + attn_cost * o[1]))
    return _layout(rows, row_w, p_lens, c_lens, width - max(c_lens))


def _rows(seq: list[int], c_lens: list[int], ids: list[int], cap: int) -> tuple[list[dict[int, list[int]]], int]:
    """First-fit into rows of `cap` slots: a sequence goes first into a row that already
    holds its prompt (costing its c - 1 completion tokens there), else into the first row with room
    for all its p + c - 1. Returns the rows (group id -> its sequences) and the fullest row's width."""
    rows: list[dict[int, list[int]]] = []
    free: list[int] = []
    # Largest groups first, each group's sequences together and longest first, so that a group's
    # completions land where its prompt already is; with no groups this is plain first-fit decreasing.
    size: dict[int, int] = {}
    for i, g in enumerate(ids):
        size[g] = size.get(g, 0) + seq[i]
    for i in sorted(range(len(seq)), key=lambda i: (-size[ids[i]], ids[i], -seq[i])):
        r = next((r for r, row in enumerate(rows) if ids[i] in row and c_lens[i] - 1 <= free[r]), None)
        if r is not None:
            rows[r][ids[i]].append(i)
            free[r] -= c_lens[i] - 1
            continue
        r = next((r for r, room in enumerate(free) if seq[i] <= room), None)
        if r is None:
            rows.append({})
            free.append(cap)
            r = len(rows) - 1
        rows[r][ids[i]] = [i]
        free[r] -= seq[i]
    return rows, cap - min(free)


def _layout(rows: list[dict[int, list[int]]], row_w: int, p_lens: list[int], c_lens: list[int], p_end: int) -> Packing:
    """The index tensors of packed `rows` of width `row_w`; every completion starts at column p_end."""
    width = p_end + max(c_lens)
    src = torch.full((len(rows), row_w), -1, dtype=torch.long)
    pos = torch.zeros(len(rows), row_w, dtype=torch.long)
    segment = torch.zeros(len(rows), row_w, dtype=torch.long)
    branch = torch.zeros(len(rows), row_w, dtype=torch.long)
    predict, out_rows, cols = [], [], []
    for r, row in enumerate(rows):
        at = 0
        for s_id, members in enumerate(row.values()):
            p = p_lens[members[0]]
            first = members[0] * width + p_end - p  # flat index of the shared prompt's first token
            src[r, at : at + p] = torch.arange(first, first + p)
            pos[r, at : at + p] = torch.arange(p)
            segment[r, at : at + p + sum(c_lens[i] - 1 for i in members)] = s_id
            last_prompt = r * row_w + at + p - 1  # the slot predicting every first completion token
            at += p
            for k, i in enumerate(members):
                c = c_lens[i]
                # Completion token j (j >= 1) is predicted by the slot holding token j - 1.
                start = i * width + p_end  # flat index of this row's first completion token
                src[r, at : at + c - 1] = torch.arange(start, start + c - 1)
                pos[r, at : at + c - 1] = torch.arange(p, p + c - 1)
                branch[r, at : at + c - 1] = k + 1
                predict.append(torch.cat([torch.tensor([last_prompt]), torch.arange(r * row_w + at, r * row_w + at + c - 1)]))
                out_rows.append(torch.full((c,), i, dtype=torch.long))
                cols.append(torch.arange(c))
                at += c - 1
        pos[r, at:] = torch.arange(row_w - at)  # trailing padding: a run of its own
        segment[r, at:] = len(row)
    return Packing(src, pos, torch.cat(predict), torch.cat(out_rows), torch.cat(cols), segment, branch,
                   int((src >= 0).sum()))


def pack_ids(input_ids: torch.Tensor, packing: Packing, pad_id: int) -> torch.Tensor:
    """[n, W] micro-batch ids -> [R, L] packed ids (padding slots get `pad_id`)."""
    flat = input_ids.reshape(-1)  # [n * W]
    return torch.where(packing.src >= 0, flat[packing.src.clamp_min(0)], pad_id)  # [R, L]


def unpack(values: torch.Tensor, packing: Packing, n: int, t: int) -> torch.Tensor:
    """[M] per-completion-token values -> [n, T], zero where there is no completion token."""
    return values.new_zeros(n, t).index_put((packing.rows, packing.cols), values)  # [n, T]
