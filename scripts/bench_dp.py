"""Data parallelism on this machine: the bench-cpu workload with 1 process and with N processes.

    .venv/bin/python scripts/bench_dp.py [--nproc 1,2] [--strategies ddp,fsdp2] [--steps 5] [--out F.json]

Same global batch each way (B = 16 prompts x G = 8, <= 64 new tokens, the tiny Qwen2 of
scripts/bench_cpu.py); N > 1 runs `grpo-train train.nproc=N` (torch's elastic launcher, gloo), each
rank sampling B / N prompts with its own vLLM engine. Reported per N: median s/step over `--steps`
timed steps (after 1 warm-up) and the sample / learner / sync split of rank 0, from metrics.jsonl.
On a 2-core CPU host the ranks share the cores, so N = 2 is not expected to be faster; on N GPUs
each rank has its own device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import cli_overrides, prepare  # noqa: E402  the same workload and arguments

KEYS = ("time/step_s", "time/sample_s", "time/learner_s", "time/sync_s")


def run(nproc: int, strategy: str, model: Path, data: Path, steps: int, work: Path) -> dict:
    run_dir = work / f"nproc{nproc}-{strategy}"
    overrides = cli_overrides(model, data, steps, "fp32", ["checkpoint.every=0", f"train.nproc={nproc}",
                                                           f"train.strategy={strategy}"])
    cmd = [sys.executable, "-m", "grpo_cli", *overrides, f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"nproc={nproc} strategy={strategy} failed:\n{out.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "time/step_s" in r][1:]  # the first step warms up
    return {"nproc": nproc, "strategy": strategy, "wall_s": wall, **{k: statistics.median(r[k] for r in timed) for k in KEYS}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", default="1,2")
    p.add_argument("--strategies", default="ddp", help="train.strategy values, e.g. ddp,fsdp2")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, data = prepare(work)
        results = [run(int(n), s, model, data, a.steps, work) for n in a.nproc.split(",") for s in a.strategies.split(",")]
    print(f"{'nproc':>5} {'strategy':>8} {'s/step':>8} {'sample':>8} {'learner':>8} {'sync':>8} {'wall (s)':>9}")
    for r in results:
        print(f"{r['nproc']:>5} {r['strategy']:>8} {r['time/step_s']:8.3f} {r['time/sample_s']:8.3f} {r['time/learner_s']:8.3f} "
              f"{r['time/sync_s']:8.3f} {r['wall_s']:9.1f}")
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
