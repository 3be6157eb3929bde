"""grpo_cli/learner/attention.py: on the CPU under bf16 autocast, attention runs in fp32; elsewhere untouched."""

from __future__ import annotations

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from grpo_cli.learner import attention


class _Module(torch.nn.Module):  # what transformers' sdpa function reads from the attention module
    is_causal = True
    num_key_value_groups = 1


def _qkv():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 2, 7, 16, generator=g, requires_grad=True) for _ in range(2))  # [B, H, L, D] fp32 (after RoPE)
    v = torch.randn(2, 2, 7, 16, generator=g).bfloat16().requires_grad_()  # bf16, from a bf16 matmul
    return q, k, v


def test_under_cpu_autocast_attention_is_the_fp32_attention_of_the_same_inputs():
    attention.install()
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is attention.sdpa_fp32_on_cpu_autocast
    q, k, v = _qkv()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](_Module(), q, k, v, None)  # [B, L, H, D]
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v.float(), is_causal=True).transpose(1, 2)
    assert out.dtype == torch.bfloat16 and torch.equal(out, want.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what autocast alone would compute: bf16 throughout
        bf16, _ = attention._SDPA(_Module(), q, k, v, None)
    assert (bf16.float() - want).abs().max() > 0  # so the comparison above is not vacuous
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))


def test_without_autocast_attention_is_transformers_own():
    attention.install()
    q, k, v = _qkv()
    v = v.detach().float()
    out, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](_Module(), q, k, v, None)
    assert torch.equal(out, attention._SDPA(_Module(), q, k, v, None)[0])
