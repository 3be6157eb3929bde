"""Sweeps that summarise themselves.

- `job_sweep(...)`: inside a job of `grpo-train -m ...`, the sweep's name (the W&B group) and the
  values this job sweeps (W&B config and tags).
- `SweepSummary`: a Hydra callback; when the multirun ends it prints a table of every job
  (its swept values, final train reward, final eval accuracy, KL, wall time) and writes it as
  `summary.csv` in the sweep dir. `grpo-summary SWEEP_DIR` prints it again later.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from grpo_cli.observe.report import find_runs, overrides, read_metrics

COLUMNS = ["job", "overrides", "train_reward", "eval_accuracy", "kl", "wall_s", "steps"]


def _swept_keys(hydra_cfg: DictConfig) -> set[str]:
    """Keys a sweep varies: `hydra.sweeper.params` (Optuna, or a config's sweep) plus sweep
    overrides of the command line (`a=1,2`, `range(...)`), which the basic sweeper saves in
    `multirun.yaml` before launching the jobs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = set((OmegaConf.select(hydra_cfg, "sweeper.params") or {}).keys())
    saved = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if saved.exists():
        task = OmegaConf.select(OmegaConf.load(saved), "hydra.overrides.task") or []
        parsed = OverridesParser.create().parse_overrides(list(task))
        keys |= {o.get_key_element() for o in parsed if o.is_sweep_override()}
    return keys


def job_sweep() -> tuple[str, dict[str, str]] | None:
    """(sweep name, {key: value} this job sweeps) inside a multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    keys = _swept_keys(hc)
    swept = {}
    for item in hc.overrides.task:
        key, _, value = item.partition("=")
        if key.lstrip("+~") in keys:
            swept[key.lstrip("+~")] = value
    parts = Path(hc.sweep.dir).parts
    return "sweep-" + "-".join(parts[-2:]), swept


def summarise(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job dir of the sweep, in job order."""
    runs = find_runs([sweep_dir])
    per_run = [overrides(r) for r in runs]
    common = set.intersection(*map(set, per_run)) if len(per_run) > 1 else set()
    rows = []
    for run, items in zip(runs, per_run):
        metrics = read_metrics(run)

        def last(key: str, metrics=metrics):
            values = [m[key] for m in metrics if m.get(key) is not None]
            return values[-1] if values else None

        rows.append({
            "job": run.name,
            "overrides": " ".join(o for o in items if o not in common),
            "train_reward": last("reward/mean"),
            "eval_accuracy": last("eval/accuracy"),
            "kl": last("kl/mean"),
            "wall_s": _wall_time(run),
            "steps": len([m for m in metrics if "reward/mean" in m]),
        })
    return rows


def _wall_time(run: Path) -> float | None:
    """Seconds the job's run took (RunLogger writes summary.json when a run ends)."""
    path = run / "summary.json"
    return json.loads(path.read_text()).get("time/wall_s") if path.exists() else None


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> Path:
    out = sweep_dir / "summary.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return out


def print_summary(sweep_dir: Path, rows: list[dict[str, Any]], csv_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep {sweep_dir}", caption=f"also in {csv_path}")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("job", "overrides") else "right")
    for row in rows:
        table.add_row(*["-" if row[c] is None else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                        for c in COLUMNS])
    # Not a terminal (a log file, a pipe, a CI job): rich would squeeze the table into 80 columns
    # and cut the overrides to "algo.bet…"; the table is only as wide as its contents anyway.
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 240
    console.print(table)


class SweepSummary(Callback):
    """Hydra callback: after the last job of a multirun, the sweep's table and summary.csv."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            rows = summarise(sweep_dir)
        except FileNotFoundError:  # no job got as far as writing metrics
            print(f"grpo-train: no job of the sweep in {sweep_dir} wrote metrics.jsonl", file=sys.stderr)
            return
        print_summary(sweep_dir, rows, write_summary(sweep_dir, rows))


def main(argv: list[str] | None = None) -> None:
    """`grpo-summary SWEEP_DIR`: the sweep's table again (and summary.csv rewritten)."""
    import argparse

    parser = argparse.ArgumentParser(prog="grpo-summary", description=(
        "Print a finished sweep's table again (each job's overrides, final train reward, final eval "
        "accuracy, KL, wall time) and rewrite SWEEP_DIR/summary.csv."))
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the sweep's directory, multirun/DATE/TIME")
    sweep_dir = Path(parser.parse_args(sys.argv[1:] if argv is None else argv).sweep_dir)
    try:
        rows = summarise(sweep_dir)
    except FileNotFoundError as err:
        print(f"grpo-summary: error: {err}", file=sys.stderr)
        sys.exit(2)
    print_summary(sweep_dir, rows, write_summary(sweep_dir, rows))
