"""`make demo-tools`: GRPO teaching a tiny model to use a tool, offline, on this CPU machine.

The task: `a*b=` for two-digit a and b, rewarded 1.0 for the exact product, with a `multiply`
tool the model may call (examples.demo.tool_task). Set-up (cached in .cache/demo-tools/):
  1. a tiny Qwen2 whose character tokenizer is tool-capable (examples.demo.tiny, tools=True);
  2. train and held-out eval files with disjoint problems;
  3. a short supervised warm start: on a fraction of the examples it calls the tool and answers
     the result, on the rest it answers directly (and a 4M-parameter model gets those wrong).
Then the real CLI trains it with GRPO through vLLM: `grpo-train +recipe=tools_demo ...`, and
held-out accuracy rises with the share of answers that use the tool.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from examples.demo.arithmetic import sft_warm_start, write_jsonl
from examples.demo.tiny import save_tiny
from examples.demo.tool_task import mark_tool_use, multiplication_rows, tool_example

CACHE = Path(".cache/demo-tools")
# Copying the operands ~50 tokens back into the call is a circuit this model only forms after ~200
# steps at lr 1e-3 (at 3e-3 it had not after 400); fewer steps leave it calling with wrong arguments.
SFT_STEPS = 300
SFT_LR = 1e-3
SFT_BATCH = 64
TOOL_FRACTION = 0.25  # share of warm-start conversations that call the tool
EVAL_ROWS = 500
TOOL_METRIC = "eval/tools/used_frac"


def prepare(cache: Path = CACHE, sft_steps: int = SFT_STEPS, fraction: float = TOOL_FRACTION) -> dict[str, Path]:
    """Build (or reuse) the base model, the data files and the warm-started model."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # tiny files: no loading/saving bars
    base, sft = cache / "base", cache / f"sft-{sft_steps}-{fraction:g}"
    train, held_out = cache / "train.jsonl", cache / "eval.jsonl"
    if not (base / "config.json").exists():
        save_tiny(base, tools=True)
    if not train.exists():
        pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
        random.Random(0).shuffle(pairs)  # eval problems never appear in training
        rows = multiplication_rows(pairs)
        write_jsonl(rows[:EVAL_ROWS], held_out)
        write_jsonl(rows[EVAL_ROWS:], train)
    if not (sft / "config.json").exists():
        print(f"warm start: {sft_steps} supervised steps, {fraction:.0%} of them calling the tool ...", flush=True)
        rows = mark_tool_use([json.loads(line) for line in train.read_text().splitlines()], fraction)
        losses = sft_warm_start(base, sft, rows, sft_steps, batch_size=SFT_BATCH, lr=SFT_LR, example=tool_example)
        print(f"warm start done: loss {losses[0]:.2f} -> {losses[-1]:.2f}", flush=True)
    return {"model": sft, "train": train, "eval": held_out}


def summary(metrics: list[dict]) -> tuple[float, float, float | None, float | None]:
    """(accuracy before, after, tool use before, after) from a run's metrics.jsonl rows."""
    evals = [m for m in metrics if "eval/accuracy" in m]
    tools = [m.get(TOOL_METRIC) for m in (evals[0], evals[-1])]
    return evals[0]["eval/accuracy"], evals[-1]["eval/accuracy"], *tools


def main(argv: list[str] | None = None) -> None:
    paths = prepare()
    run_dir = Path("outputs/demo-tools") / time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [
        sys.executable, "-m", "grpo_cli", "+recipe=tools_demo", f"model.path={paths['model']}",
        f"data.path={paths['train']}", f"data.eval_path={paths['eval']}", f"hydra.run.dir={run_dir}",
        *(argv if argv is not None else sys.argv[1:]),
    ]
    print("$ grpo-train " + " ".join(cmd[3:]), flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd)
    elapsed = time.perf_counter() - start
    if code != 0:
        sys.exit(code)
    before, after, used_before, used_after = summary(
        [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()])
    print(f"\nheld-out greedy accuracy: {before:.1%} -> {after:.1%} ({100 * (after - before):+.1f} points) "
          f"in {elapsed:.0f} s of training (engine start included); run dir: {run_dir}")
    if used_before is not None and used_after is not None:
        print(f"answers that called the tool: {used_before:.1%} -> {used_after:.1%}")


if __name__ == "__main__":
    main()
