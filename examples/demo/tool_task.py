"""A task the tiny model cannot do itself but can with a tool: two-digit multiplication.

Prompts `37*48=` (column `answer`: `1776`). A character model of 4M parameters trained for a few
minutes does not learn 2-digit x 2-digit products, but it can learn to copy: the operands into a
call of `multiply`, the tool's result into its answer. The supervised warm start shows the call
format on a fraction of the examples and a direct (true, but unlearnable) answer on the rest, so
the model starts out calling the tool sometimes; GRPO should make it call the tool, and be right,
more often.

    python -m examples.demo.tool_task MODEL_DIR EVAL_JSONL   # tool use and accuracy (transformers)
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from examples.demo.tiny import IM_END, TOOL_CALL, TOOL_CALL_END

CALL_RE = re.compile(re.escape(TOOL_CALL) + r"(.*?)" + re.escape(TOOL_CALL_END), re.DOTALL)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.

    Returns:
        The product a * b.
    """
    return int(a) * int(b)


def multiplication_rows(pairs: list[tuple[int, int]]) -> list[dict]:
    """`a*b=` -> the product, as data rows (columns prompt, answer)."""
    return [{"prompt": f"{a}*{b}=", "answer": str(a * b)} for a, b in pairs]


def conversation(row: dict, use_tool: bool) -> list[dict]:
    """The warm start's target for one row: call `multiply` and answer its result, or answer at once."""
    user = {"role": "user", "content": row["prompt"]}
    if not use_tool:
        return [user, {"role": "assistant", "content": row["answer"]}]
    a, b = map(int, row["prompt"].rstrip("=").split("*"))
    call = {"type": "function", "function": {"name": "multiply", "arguments": {"a": a, "b": b}}}
    return [user, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "multiply", "content": str(multiply(a, b))},
            {"role": "assistant", "content": row["answer"]}]


def assistant_labels(tok, messages: list[dict], tools: list) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and labels that keep only what the model generates:
    each assistant turn up to its `<|im_end|>`. The prompt, the tool turns and the newline after
    `<|im_end|>` (the engine stops at it; the template writes it) get -100."""
    def render(msgs: list[dict], gen: bool = False) -> str:
        return tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=gen)

    ids, labels, done = [], [], ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head, whole = render(messages[:k], gen=True), render(messages[: k + 1])
        assert head.startswith(done) and whole.startswith(head), "the chat template is not prefix preserving"
        body = whole[len(head): whole.rindex(IM_END) + len(IM_END)]
        context = tok(head[len(done):], add_special_tokens=False)["input_ids"]
        target = tok(body, add_special_tokens=False)["input_ids"]
        ids += context + target
        labels += [-100] * len(context) + target
        done = head + body
    return ids, labels


def tool_example(tok, row: dict) -> tuple[list[int], list[int]]:
    """sft_warm_start's `example` for this task: the row's conversation (`use_tool` says which kind)."""
    return assistant_labels(tok, conversation(row, row["use_tool"]), [multiply])


def mark_tool_use(rows: list[dict], fraction: float, seed: int = 0) -> list[dict]:
    """The rows with `use_tool` True on `fraction` of them (seeded), for the warm start."""
    rng = random.Random(seed)
    return [{**r, "use_tool": rng.random() < fraction} for r in rows]


def parse_call(text: str) -> tuple[int, int] | None:
    """(a, b) of the first well-formed `multiply` call in `text`, else None."""
    match = CALL_RE.search(text)
    if match is None:
        return None
    try:
        call = json.loads(match.group(1))
        args = call["arguments"]
        args = json.loads(args) if isinstance(args, str) else args
        return (int(args["a"]), int(args["b"])) if call["name"] == "multiply" else None
    except (ValueError, KeyError, TypeError):
        return None


@torch.no_grad()
def measure(model_dir: Path, rows: list[dict], temperature: float = 0.0, seed: int = 0) -> dict[str, float]:
    """Play the task with transformers (one tool round, as `tools.max_turns=1`): the share of rows
    that call the tool, that call it with the right arguments, that answer right, and the accuracy
    of the direct answers (no call)."""
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.manual_seed(seed)

    def generate(texts: list[str], max_new_tokens: int) -> list[str]:
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        sample = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
        out = model.generate(**batch, max_new_tokens=max_new_tokens, **sample)  # [B, prompt + new]
        return tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=False)

    prompts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tools=[multiply], tokenize=False,
                                       add_generation_prompt=True) for r in rows]
    first = [t.split(IM_END)[0].split(tok.eos_token)[0] for t in generate(prompts, 64)]
    calls = [parse_call(t) for t in first]
    final = list(first)
    called = [i for i, c in enumerate(calls) if c is not None]
    if called:
        follow = [prompts[i] + first[i] + IM_END + f"\n<|im_start|>tool\n{multiply(*calls[i])}{IM_END}\n<|im_start|>assistant\n"
                  for i in called]
        for i, text in zip(called, generate(follow, 16)):
            final[i] = text.split(IM_END)[0].split(tok.eos_token)[0]
    right = [f.strip() == r["answer"] for f, r in zip(final, rows)]
    direct = [i for i, c in enumerate(calls) if c is None]
    operands = [tuple(map(int, r["prompt"].rstrip("=").split("*"))) for r in rows]
    return {
        "tool_used": len(called) / len(rows),
        "right_arguments": sum(calls[i] == operands[i] for i in called) / len(rows),
        "accuracy": sum(right) / len(rows),
        "direct_accuracy": sum(right[i] for i in direct) / max(1, len(direct)),
        "tool_accuracy": sum(right[i] for i in called) / max(1, len(called)),
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: tool use and accuracy of a model on held-out rows, greedy and sampled."""
    p = argparse.ArgumentParser(prog="python -m examples.demo.tool_task", description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("rows", type=Path, help="a JSONL file of prompt/answer rows")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="for the sampled pass (the other is greedy)")
    a = p.parse_args(argv)
    rows = [json.loads(line) for line in a.rows.read_text().splitlines()][: a.n]
    for name, temp in (("greedy", 0.0), (f"sampled T={a.temperature}", a.temperature)):
        m = measure(a.model_dir, rows, temp)
        print(f"{name}: " + ", ".join(f"{k} {v:.1%}" for k, v in m.items()))


if __name__ == "__main__":
    main()
