"""Attention in fp32 under CPU autocast.

Under `train.autocast_dtype=bfloat16` the CPU's flash-attention kernel runs in bf16, and its
backward is 2.6x slower there than in fp32 (scripts/profile_learner.py, bench shape: 33.5 vs 12.8 ms
a call), while its matmuls are a small part of the learner's FLOPs. So on the CPU, and only under
autocast, transformers' "sdpa" attention runs in fp32 (autocast off, q/k/v cast up, the output cast
back to the value's dtype): the learner step of the bench went 0.69 -> 0.62 s. On CUDA, and without
autocast, it is transformers' own function, untouched.
"""

from __future__ import annotations

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

_SDPA = ALL_ATTENTION_FUNCTIONS["sdpa"]


def sdpa_fp32_on_cpu_autocast(module, query, key, value, attention_mask, **kwargs):
    if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return _SDPA(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast("cpu", enabled=False):
        out, weights = _SDPA(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(value.dtype), weights


def install() -> None:
    """Route transformers' "sdpa" attention through `sdpa_fp32_on_cpu_autocast` (idempotent)."""
    ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa_fp32_on_cpu_autocast
