"""Where a run's numbers go: metrics.jsonl in the run dir, Weights & Biases, TensorBoard, report.png,
and the console.

The console (stderr) shows a short header, the progress bar, evaluations as they come and the final
table; engine and library logs go to the run's log file (grpo_cli.observe.console).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import wandb
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from grpo_cli.observe.console import LOG_FILE, console, is_verbose
from grpo_cli.observe.report import draw
from grpo_cli.observe.sweep import job_sweep

log = logging.getLogger(__name__)


def _wandb_mode(mode: str) -> str:
    """`auto` is online when W&B credentials exist, offline otherwise."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):  # the user's environment wins over the guess
        return os.environ["WANDB_MODE"]
    # wandb.login(prompt=False) only looks for a key (env, netrc); `wandb.api.api_key` is deprecated
    # and prints a warning on every run.
    has_key = bool(os.environ.get("WANDB_API_KEY")) or wandb.login(prompt=False, verify=False)
    return "online" if has_key else "offline"


def to_host(metrics: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Floats for every value. The 0-dim tensors (the learner's live on its device) are stacked per
    device and cross to the host in one copy each, so a step waits for the GPU once."""
    out = dict(metrics)
    by_device: dict[torch.device, list[str]] = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            by_device.setdefault(v.device, []).append(k)
    for keys in by_device.values():
        out |= dict(zip(keys, torch.stack([metrics[k].detach().float() for k in keys]).tolist()))
    return out


def _md_cell(value) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class RunHeader:
    """What the console's header says about a run."""

    model: str  # model.path
    data: str  # data.path
    train_rows: int
    eval_rows: int | None  # None: no evaluation
    total_steps: int  # 0: eval_only, no training
    prompts_per_step: int  # B
    group_size: int  # G
    run_name: str | None = None  # the W&B run name


class RunLogger:
    def __init__(self, cfg: DictConfig, run_dir: Path, header: RunHeader, record: dict, accuracy_reward: str,
                 wandb_id: str | None = None):
        """`cfg`: the `logger` section. `record`: the run's resolved config, as W&B keeps it.
        `accuracy_reward`: the reward the progress bar shows as accuracy. `wandb_id`: continue
        this W&B run (a resumed run) instead of starting a new one."""
        self.cfg, self.run_dir = cfg, run_dir
        self.accuracy_key = f"reward/{accuracy_reward}/mean"
        self.metrics_file = open(run_dir / "metrics.jsonl", "a")
        self.start, self.step, self.total_steps = time.perf_counter(), 0, header.total_steps
        mode = _wandb_mode(self.cfg.wandb_mode)
        self.wandb = None
        if mode != "disabled":
            config, group, tags = dict(record), self.cfg.group, list(self.cfg.tags)
            sweep = job_sweep()
            if sweep is not None:  # a job of `grpo-train -m`: one run in the sweep's group
                name, swept = sweep
                group = group or name
                tags += [f"{k}={v}" for k, v in swept.items()]
                config["sweep"] = {"name": name, "swept": swept}
            try:
                self.wandb = wandb.init(
                    project=self.cfg.project, entity=self.cfg.entity, group=group, tags=tags,
                    name=header.run_name, mode=mode, dir=str(run_dir), config=config,
                    id=wandb_id, resume="allow" if wandb_id else None,
                    settings=wandb.Settings(silent=not is_verbose(self.cfg)),
                )
                log.info("W&B run %s: mode=%s group=%s tags=%s", self.wandb.id, mode, group, tags)
            except Exception as err:  # no network, bad key, service down: the run goes on without W&B
                self._wandb_failed("start", err)
        self.tensorboard = None
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self._header(header, run_dir, mode)
        self.progress = None
        if self.cfg.progress:
            self.progress = Progress(
                TextColumn("[bold]GRPO"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(), console=console,
            )
            self.task = self.progress.add_task("train", total=header.total_steps, info="")
            self.progress.start()

    def log(self, step: int, metrics: dict[str, float | torch.Tensor]) -> None:
        metrics = to_host(metrics)
        self.step = step
        self.metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.metrics_file.flush()
        self._wandb_log(metrics, step)
        if self.tensorboard is not None:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(key, value, step)
        if "reward/mean" in metrics:
            info = (f"reward {metrics['reward/mean']:.3f}  acc {metrics.get(self.accuracy_key, float('nan')):.3f}  "
                    f"kl {metrics.get('kl/mean', 0.0):.4f}  {metrics['time/step_s']:.2f} s/step")
            if self.progress is not None:
                self.progress.update(self.task, completed=step, info=info)
            elif self.cfg.print_every and (step % self.cfg.print_every == 0 or step == self.total_steps):
                console.print(f"step {step}/{self.total_steps}: {info}", highlight=False)
        if "eval/accuracy" in metrics:
            extra = "  ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in metrics.items() if k != "eval/accuracy")
            console.print(f"eval @ step {step}: accuracy {metrics['eval/accuracy']:.1%}  {extra}", highlight=False)

    def _header(self, h: RunHeader, run_dir: Path, mode: str) -> None:
        """A few lines saying what runs, where its files go and where its W&B run is."""
        B, G = h.prompts_per_step, h.group_size
        evals = f", {h.eval_rows} eval rows" if h.eval_rows is not None else ", no evaluation"
        if self.wandb is None:
            wb = "disabled" if mode == "disabled" else "not started (see the warning above)"
        elif mode == "offline":
            wb = f"offline; upload later: wandb sync {run_dir / 'wandb'}/offline-run-*"
        else:
            wb = f"{mode} {getattr(self.wandb, 'url', None) or '(no run URL yet)'}"
        logs = "" if is_verbose(self.cfg) else f" (engine and library logs: {LOG_FILE})"
        for line in (f"[bold]grpo-train[/]: model {h.model}",
                     f"  data    {h.data} ({h.train_rows} train rows{evals})",
                     f"  steps   {h.total_steps} of B x G = {B} x {G} = {B * G} completions" if h.total_steps
                     else "  mode    evaluation only (eval_only=true): no training steps",
                     f"  run dir {run_dir}{logs}",
                     f"  W&B     {wb}"):
            console.print(line, soft_wrap=True, highlight=False)

    def maybe_log_completions(self, step: int, groups, advantages: torch.Tensor) -> None:
        """Every `logger.completions_every` steps, the first `completions_rows` completions trained on
        (`groups`: ScoredGroups) with their rewards and advantages."""
        every = self.cfg.completions_every
        if not every or step % every:
            return
        scores, texts = groups.scores, groups.rollouts.texts
        self.log_completions(step, [
            {"prompt": groups.prompts[i], "completion": texts[i], "reward": scores.total[i].item(),
             "advantage": advantages[i].item(), **{f"reward/{k}": v[i].item() for k, v in scores.per_reward.items()}}
            for i in range(min(self.cfg.completions_rows, len(groups.prompts)))
        ])

    def log_completions(self, step: int, rows: list[dict]) -> None:
        """A sample of completions: a wandb.Table, and completions.jsonl in the run dir."""
        with open(self.run_dir / "completions.jsonl", "a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")
        if self.wandb is not None and rows:
            columns = list(rows[0])
            table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
            self._wandb_log({"completions": table}, step)
        if self.tensorboard is not None and rows:  # a markdown table in TensorBoard's Text tab
            columns = list(rows[0])
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_md_cell(r[c]) for c in columns) + " |" for r in rows]
            self.tensorboard.add_text("completions", "\n".join(lines), step)

    @property
    def wandb_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    def _wandb_log(self, data: dict, step: int) -> None:
        if self.wandb is None:
            return
        try:
            self.wandb.log(data, step=step)
        except Exception as err:
            self._wandb_failed("log", err)

    def _wandb_failed(self, what: str, err: Exception) -> None:
        """Warn once and go on logging to metrics.jsonl only."""
        first_line = (str(err).splitlines() or [""])[0][:200]
        console.print(f"[yellow]warning:[/] W&B could not {what} ({type(err).__name__}: {first_line}); "
                      f"logging to {self.run_dir / 'metrics.jsonl'} only")
        if self.wandb is not None:
            try:
                self.wandb.finish(exit_code=1)
            except Exception:
                pass
        self.wandb = None

    def print_table(self, title: str, values: dict[str, float]) -> None:
        table = Table(title=title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in values.items():
            table.add_row(key, f"{value:.4f}")
        console.print(table)

    def close(self) -> None:
        """Stop the bar, write summary.json (wall time), close W&B and TensorBoard, draw report.png."""
        if self.progress is not None:
            self.progress.stop()
        self.metrics_file.close()
        # Wall time (engine start, evals and all) for the sweep summary; kept out of metrics.jsonl,
        # whose lines are per step.
        (self.run_dir / "summary.json").write_text(json.dumps(
            {"step": self.step, "time/wall_s": time.perf_counter() - self.start}) + "\n")
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as err:
                self._wandb_failed("finish", err)
        if self.tensorboard is not None:
            self.tensorboard.close()
        draw([self.run_dir], self.run_dir / "report.png")


class NullLogger:
    """The logger of every rank but 0 under torchrun: the same calls, nothing written or shown
    (rank 0 logs the global values)."""

    wandb_id = None

    def log(self, *args, **kwargs) -> None:
        pass

    log_completions = maybe_log_completions = print_table = close = log
