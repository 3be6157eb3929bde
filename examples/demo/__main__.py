"""`make demo`: GRPO visibly improving a tiny model, offline, on this CPU machine.

The task: `max(a,b)=` for two-digit a != b, rewarded 1.0 when the answer is the larger number.
Set-up (cached in .cache/demo/, so a second run starts training at once):
  1. a tiny Qwen2 with a character tokenizer (examples.demo.tiny), random weights;
  2. train and held-out eval files with disjoint problems;
  3. a short supervised warm start (like an Instruct checkpoint before RL): it learns the format
     and to copy one of the two numbers, and is right about a third of the time (greedy).
Then the real CLI trains it with GRPO through vLLM: `grpo-train +recipe=demo ...`.
`python -m examples.demo --tools` runs the tool-calling demo instead (examples/demo/tools_demo.py).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from examples.demo import tools_demo
from examples.demo.arithmetic import max_rows, sft_warm_start, write_jsonl
from examples.demo.tiny import save_tiny

CACHE = Path(".cache/demo")
SFT_STEPS = 30
EVAL_ROWS = 500


def prepare(cache: Path = CACHE, sft_steps: int = SFT_STEPS) -> dict[str, Path]:
    """Build (or reuse) the base model, the data files and the warm-started model."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # tiny files: no loading/saving bars
    base, sft = cache / "base", cache / f"sft-{sft_steps}"
    train, held_out = cache / "train.jsonl", cache / "eval.jsonl"
    if not (base / "config.json").exists():
        save_tiny(base)
    if not train.exists():
        pairs = [(a, b) for a in range(10, 100) for b in range(10, 100) if a != b]
        random.Random(0).shuffle(pairs)  # eval problems never appear in training
        rows = max_rows(pairs)
        write_jsonl(rows[:EVAL_ROWS], held_out)
        write_jsonl(rows[EVAL_ROWS:], train)
    if not (sft / "config.json").exists():
        print(f"warm start: {sft_steps} supervised steps on the training problems ...", flush=True)
        rows = [json.loads(line) for line in train.read_text().splitlines()]
        losses = sft_warm_start(base, sft, rows, sft_steps, batch_size=128)
        print(f"warm start done: loss {losses[0]:.2f} -> {losses[-1]:.2f}", flush=True)
    return {"model": sft, "train": train, "eval": held_out}


def next_commands(paths: dict[str, Path], venv: str = ".venv") -> str:
    """What to type after `make demo`, with this demo's real paths (the CLI is in the venv, not on PATH)."""
    data = f"model.path={paths['model']} data.path={paths['train']} data.eval_path={paths['eval']}"
    return (f"try it yourself (or `source {venv}/bin/activate`, then plain grpo-train):\n"
            f"  {venv}/bin/grpo-train +recipe=demo {data} train.max_steps=20 hydra.run.dir=outputs/try\n"
            f"  {venv}/bin/grpo-eval +recipe=demo {data} model.path=outputs/try/checkpoints/final")


def main(argv: list[str] | None = None) -> None:
    argv = list(argv if argv is not None else sys.argv[1:])
    if "--tools" in argv:  # `make demo-tools`: the tool-calling demo (examples/demo/tools_demo.py)
        return tools_demo.main([a for a in argv if a != "--tools"])
    paths = prepare()
    run_dir = Path("outputs/demo") / time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [
        sys.executable, "-m", "grpo_cli", "+recipe=demo", f"model.path={paths['model']}",
        f"data.path={paths['train']}", f"data.eval_path={paths['eval']}", f"hydra.run.dir={run_dir}",
        *argv,
    ]
    print("$ grpo-train " + " ".join(cmd[3:]), flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd)
    elapsed = time.perf_counter() - start
    if code != 0:
        sys.exit(code)
    evals = [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval/accuracy" in m]
    before, after = evals[0]["eval/accuracy"], evals[-1]["eval/accuracy"]
    print(f"\nheld-out greedy accuracy: {before:.1%} -> {after:.1%} ({100 * (after - before):+.1f} points) "
          f"in {elapsed:.0f} s of training (engine start included); run dir: {run_dir}")
    print("\n" + next_commands(paths))


if __name__ == "__main__":
    main()
