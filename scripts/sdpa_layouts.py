"""Which arguments each learner layout hands torch's scaled_dot_product_attention (docs/gpu.md).

    python scripts/sdpa_layouts.py

transformers builds the same masks on CUDA as here, and torch's flash kernel takes no attn_mask, so
a row with a mask cannot get flash attention on a GPU. A 4-head / 2-KV-head Qwen2, random weights.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import transformers.integrations.sdpa_attention as sa
    from transformers import AutoModelForCausalLM

    from examples.demo.tiny import save_tiny
    from grpo_cli.learner.learner import packed_mask
    from grpo_cli.learner.packing import pack_ids, plan

    path = save_tiny(tempfile.mkdtemp(), hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4, num_kv_heads=2)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    seen, sdpa = [], sa.torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, enable_gqa=False, **kw):
        seen.append(f"mask={None if attn_mask is None else tuple(attn_mask.shape)} is_causal={is_causal} "
                    f"kv_heads={k.shape[1]} of {q.shape[1]} enable_gqa={enable_gqa}")
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=enable_gqa, **kw)

    sa.torch.nn.functional.scaled_dot_product_attention = spy
    P, T = 6, 5
    prompt_lens, completion_lens = torch.tensor([4, 6, 5, 6]), torch.tensor([5, 3, 2, 5])
    ids = torch.randint(3, 100, (4, P + T))  # [n, P + T]
    attn = torch.zeros(4, P + T, dtype=torch.long)
    for i in range(4):
        attn[i, P - prompt_lens[i] : P + completion_lens[i]] = 1
    pk = plan(prompt_lens, completion_lens, P + T, torch.tensor([0, 0, 1, 1]), 0.0)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp_min(0), use_cache=False)
        print("padded (the learner with pack_sequences=false):", seen[-1])
        model(input_ids=pack_ids(ids, pk, 0), attention_mask=packed_mask(model, pk), position_ids=pk.position_ids,
              use_cache=False)
        print("packed, shared prompts (the default):          ", seen[-1])
        model(input_ids=ids[:1], use_cache=False)
        print("one sequence, no padding:                      ", seen[-1])


if __name__ == "__main__":
    main()
