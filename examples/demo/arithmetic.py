"""Synthetic verifiable tasks ("a+b=" -> "c", "max(a,b)=" -> "c") and a short supervised warm
start for them.

The warm start plays the part of an Instruct checkpoint before RL: a model that knows the
format and is sometimes right. GRPO then has to make it right more often.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def make_rows(n: int, seed: int, max_operand: int = 99) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        rows.append({"prompt": f"{a}+{b}=", "answer": str(a + b)})
    return rows


def max_rows(pairs: list[tuple[int, int]]) -> list[dict]:
    """`max(a,b)=` -> the larger number: copying is easy for attention, choosing is the skill."""
    return [{"prompt": f"max({a},{b})=", "answer": str(max(a, b))} for a, b in pairs]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_warm_start(
    base_dir: Path, out_dir: Path, rows: list[dict], steps: int, batch_size: int = 64, lr: float = 3e-3, seed: int = 0
) -> list[float]:
    """Teach `prompt -> answer<eos>` with cross-entropy on the answer tokens; save to out_dir.

    Returns the loss of every step. Deliberately short: the point is a partly competent start.
    """
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    rng = random.Random(seed)
    losses = []
    for _ in range(steps):
        batch = rng.sample(rows, batch_size)
        prompts = tok([r["prompt"] for r in batch], add_special_tokens=False)["input_ids"]
        answers = tok([r["answer"] + tok.eos_token for r in batch], add_special_tokens=False)["input_ids"]
        length = max(len(p) + len(a) for p, a in zip(prompts, answers))
        ids = torch.full((batch_size, length), tok.pad_token_id)
        labels = torch.full((batch_size, length), -100)  # loss on the answer only
        attn = torch.zeros(batch_size, length, dtype=torch.long)
        for i, (p, a) in enumerate(zip(prompts, answers)):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
            attn[i, : len(p) + len(a)] = 1
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return losses
