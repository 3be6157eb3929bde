"""`grpo-report RUN_DIR [RUN_DIR ...]`: the curves people look at, from metrics.jsonl, in one PNG.

Each argument is a run dir (holding metrics.jsonl) or a sweep dir (whose job dirs hold one); runs
are overlaid, labelled by their Hydra overrides when they have any. Every training run also
writes its own `report.png` when it ends.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

# (metric key, panel title); eval/accuracy is drawn with markers (a few points per run).
PANELS = [
    ("reward/mean", "train reward"),
    ("eval/accuracy", "eval accuracy (greedy)"),
    ("kl/mean", "KL to reference"),
    ("completion_len/mean", "completion length (tokens)"),
    ("clip_frac", "clip fraction"),
    ("time/step_s", "step time (s)"),
]


def find_runs(paths: list[Path]) -> list[Path]:
    """Run dirs: each path itself if it holds metrics.jsonl, else the job dirs below it that do."""
    runs = []
    for path in paths:
        if (path / "metrics.jsonl").exists():
            runs.append(path)
        else:
            found = sorted((p.parent for p in path.glob("*/metrics.jsonl")), key=_job_order)
            if not found:
                raise FileNotFoundError(f"{path}: no metrics.jsonl in it or in its job dirs")
            runs.extend(found)
    return runs


def _job_order(path: Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def read_metrics(run: Path) -> list[dict]:
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
                break
    return rows


def overrides(run: Path) -> list[str]:
    """The job's command-line overrides (Hydra's .hydra/overrides.yaml), without hydra.* ones."""
    path = run / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) or [] if path.exists() else []
    return [o for o in items if not o.startswith("hydra.")]


def run_labels(runs: list[Path]) -> list[str]:
    """What tells the runs apart: the overrides not shared by all of them (a sweep's swept
    values), else the directory names."""
    per_run = [overrides(r) for r in runs]
    common = set.intersection(*map(set, per_run)) if per_run else set()
    labels = [" ".join(o for o in items if o not in common) for items in per_run]
    if len(runs) == 1 or not all(labels) or len(set(labels)) < len(labels):
        return [f"{r.parent.name}/{r.name}" if r.name.isdigit() else r.name for r in runs]
    return labels


def draw(runs: list[Path], out: Path, labels: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labels = labels or run_labels(runs)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), constrained_layout=True)
    for run, label in zip(runs, labels):
        rows = read_metrics(run)
        for ax, (key, _) in zip(axes.flat, PANELS):
            points = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if key.startswith("eval/") else None, markersize=4,
                        linewidth=1.5, label=label)
    for ax, (key, title) in zip(axes.flat, PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not ax.lines:
            ax.text(0.5, 0.5, f"no {key}", ha="center", va="center", transform=ax.transAxes, color="gray")
    handles, names = axes.flat[0].get_legend_handles_labels()
    if not handles:
        handles, names = axes.flat[1].get_legend_handles_labels()
    if handles and len(runs) > 1:
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(runs), 4), fontsize=8)
    fig.suptitle(runs[0].name if len(runs) == 1 else f"{len(runs)} runs", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="grpo-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs, or sweep dirs holding job dirs")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="PNG to write (default: report.png in the only dir given, else ./report.png)")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.dirs)
    except FileNotFoundError as err:
        print(f"grpo-report: error: {err}", file=sys.stderr)
        sys.exit(2)
    out = args.out or (args.dirs[0] / "report.png" if len(args.dirs) == 1 else Path("report.png"))
    print(draw(runs, out))


if __name__ == "__main__":
    main()
