"""A soak test: the demo's run (recipes/demo.yaml) for many steps, watched for leaks and slowdowns.

    .venv/bin/python scripts/soak.py [--steps 1000] [--every 100] [--out soak.json] [KEY=VALUE ...]

Builds (or reuses) `make demo`'s model and data in .cache/demo, then runs the real CLI,
`python -m grpo_cli +recipe=demo ... train.max_steps=N`, as a subprocess (evaluation, checkpoints
and the recipe's logger as the demo has them; extra arguments are grpo-train overrides). Every
`--every` steps it prints a row: the run's RSS (the process and any children, summed), the
highest RSS so far, the median step / sample / learner seconds of the last `--every` steps, and
the size of the run's logs (metrics.jsonl, the logger's files, the whole run dir without
checkpoints). At the end it compares the row of step `--every` with the last one: RSS growth and
step-time drift over 5 % fail the soak (exit 1), since a leak or a slowdown is a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 0.05  # RSS growth and step-time drift allowed between the first row and the last


def tree_rss_mib(pid: int) -> float:
    """RSS of `pid` and all its descendants, in MiB (from /proc; 0 for a process that has gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total / 1024


def dir_mib(path: Path, skip: str = "checkpoints") -> float:
    """Size of the files under `path` in MiB, leaving out the `skip` folder (checkpoints rotate)."""
    if not path.exists():
        return 0.0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and skip not in f.parts) / 2**20


class StepLog:
    """The step lines of a growing metrics.jsonl, read incrementally (the watcher stays cheap)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.steps = path, 0, []

    def read(self) -> list[dict]:
        if not self.path.exists():
            return self.steps
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for the next read
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            row = json.loads(line)
            if "time/step_s" in row:
                self.steps.append(row)
        return self.steps


def row_at(step: int, steps: list[dict], every: int, rss: float, peak: float, run_dir: Path) -> dict:
    window = steps[max(step - every, 1) : step]  # the last `every` steps; step 1 (warm-up) left out
    med = {k: statistics.median(r[k] for r in window) for k in ("time/step_s", "time/sample_s", "time/learner_s")}
    return {"step": step, "rss_mib": rss, "peak_rss_mib": peak, "step_s": med["time/step_s"],
            "sample_s": med["time/sample_s"], "learner_s": med["time/learner_s"],
            "completion_len": statistics.fmean(r["completion_len/mean"] for r in window),
            "metrics_jsonl_kib": (run_dir / "metrics.jsonl").stat().st_size / 1024,
            "logger_mib": dir_mib(run_dir / "wandb") + dir_mib(run_dir / "tensorboard"),
            "run_dir_mib": dir_mib(run_dir)}


def print_row(r: dict) -> None:
    print(f"{r['step']:>6} {r['rss_mib']:>9,.0f} {r['peak_rss_mib']:>9,.0f} {r['step_s']:>7.3f} {r['sample_s']:>7.3f} "
          f"{r['learner_s']:>7.3f} {r['completion_len']:>6.2f} {r['metrics_jsonl_kib']:>9,.0f} {r['logger_mib']:>8.2f} "
          f"{r['run_dir_mib']:>8.2f}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=100, help="a row every N steps")
    p.add_argument("--run-dir", type=Path, help="the run's directory (default outputs/soak/<time>)")
    p.add_argument("--out", type=Path, help="also write the rows and the verdict as JSON here")
    p.add_argument("override", nargs="*", help="extra grpo-train overrides")
    a = p.parse_args()
    if a.steps < 2 * a.every:
        p.error("--steps must be at least 2 x --every (a first row to compare the last one with)")

    os.chdir(REPO)  # the demo's cache is .cache/demo of the repo
    # In a subprocess: the watcher itself stays small (no torch) and takes no cores from the run.
    prepare = "import json; from examples.demo.__main__ import prepare; print(json.dumps({k: str(v) for k, v in prepare().items()}))"
    paths = json.loads(subprocess.run([sys.executable, "-c", prepare], check=True, capture_output=True, text=True,
                                      cwd=REPO).stdout.splitlines()[-1])
    run_dir = (a.run_dir or Path("outputs/soak") / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    cmd = [sys.executable, "-m", "grpo_cli", "+recipe=demo", f"model.path={paths['model']}",
           f"data.path={paths['train']}", f"data.eval_path={paths['eval']}", f"train.max_steps={a.steps}",
           f"hydra.run.dir={run_dir}", *a.override]
    print("$ grpo-train " + " ".join(cmd[3:]), flush=True)
    print(f"{'step':>6} {'RSS MiB':>9} {'peak MiB':>9} {'step s':>7} {'sample':>7} {'learner':>7} {'comp':>6} "
          f"{'metr KiB':>9} {'log MiB':>8} {'run MiB':>8}", flush=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")  # the run's console output
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    rows, peak, next_row, log_lines = [], 0.0, a.every, StepLog(run_dir / "metrics.jsonl")
    while True:
        done = proc.poll() is not None
        rss = tree_rss_mib(proc.pid) if not done else 0.0
        peak = max(peak, rss)
        steps = log_lines.read()
        while len(steps) >= next_row and (rss or done):
            rows.append(row_at(next_row, steps, a.every, rss, peak, run_dir))
            print_row(rows[-1])
            next_row += a.every
        if done:
            break
        time.sleep(1.0)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"soak: the run failed (exit {proc.returncode}); see {log.name}", file=sys.stderr)
        return 1
    first, last = rows[0], rows[-1]
    growth = last["rss_mib"] / first["rss_mib"] - 1
    drift = last["step_s"] / first["step_s"] - 1
    ok = growth < LIMIT and drift < LIMIT
    print(f"soak: {len(steps)} steps in {wall:.0f} s; between step {first['step']} and step {last['step']}: "
          f"RSS {first['rss_mib']:,.0f} -> {last['rss_mib']:,.0f} MiB ({100 * growth:+.1f} %), median step "
          f"{first['step_s']:.3f} -> {last['step_s']:.3f} s ({100 * drift:+.1f} %); limits +{100 * LIMIT:.0f} % each: "
          + ("ok" if ok else "FAILED"), flush=True)
    if a.out:
        a.out.write_text(json.dumps({"cmd": cmd, "wall_s": wall, "rows": rows, "rss_growth": growth,
                                     "step_time_drift": drift, "ok": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
