"""Synthetic verifiable tasks ("a+b=" -> "c", "max(a,b)=" -> "c") and a short supervised warm
start for them.

The warm start plays the part of an Instruct checkpoint before RL: a model that knows the
format and is sometimes right. GRPO then has to make it right more often.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
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


def answer_example(tok, row: dict) -> tuple[list[int], list[int]]:
    """`prompt -> answer<eos>` as token ids and labels: -100 on the prompt, the loss on the answer."""
    prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
    answer = tok(row["answer"] + tok.eos_token, add_special_tokens=False)["input_ids"]
    return prompt + answer, [-100] * len(prompt) + answer


def sft_warm_start(
    base_dir: Path, out_dir: Path, rows: list[dict], steps: int, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
    example: Callable[..., tuple[list[int], list[int]]] = answer_example,
) -> list[float]:
    """Cross-entropy on the tokens that `example(tokenizer, row)` labels (default: the answer of
    `prompt -> answer<eos>`); save to out_dir. Returns the loss of every step. Deliberately short:
    the point is a partly competent start.
    """
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    rng = random.Random(seed)
    losses = []
    for _ in range(steps):
        examples = [example(tok, r) for r in rng.sample(rows, batch_size)]
        length = max(len(ids) for ids, _ in examples)
        ids = torch.full((batch_size, length), tok.pad_token_id)  # [B, T]
        labels = torch.full((batch_size, length), -100)  # [B, T], -100: no loss there
        attn = torch.zeros(batch_size, length, dtype=torch.long)  # [B, T]
        for i, (seq, lab) in enumerate(examples):
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, : len(seq)] = torch.tensor(lab)
            attn[i, : len(seq)] = 1
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
