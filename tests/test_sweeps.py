"""Sweeps: the shipped launcher and sweeper configs compose, and a sweep summarises itself."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from hydra.utils import get_class

from grpo_cli.config.paths import config_dir
from grpo_cli.config.validate import register_configs


def _compose_hydra(overrides):
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True).hydra


@pytest.mark.parametrize("overrides, node, target", [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "launcher", "JoblibLauncher"),
    (["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=720"], "launcher", "SlurmLauncher"),
    (["hydra/sweeper=optuna_grpo", "hydra.sweeper.n_trials=3"], "sweeper", "OptunaSweeper"),
])
def test_shipped_launchers_and_sweeper_compose(overrides, node, target):
    section = _compose_hydra(overrides)[node]
    assert section._target_.endswith(target)
    get_class(section._target_)  # the plugin is installed (the `sweep` extra)
    if target == "SlurmLauncher":
        assert (section.partition, section.timeout_min, section.gpus_per_node) == ("gpu", 720, 1)
    if target == "OptunaSweeper":
        assert section.direction == "maximize" and section.n_trials == 3
        assert set(section.params) == {"algo.group_size", "algo.beta", "algo.epsilon", "optim.lr"}


@pytest.mark.engine
def test_a_parallel_two_job_sweep_summarises_itself(tiny_overrides, tmp_path):
    """Two jobs in parallel (joblib), W&B offline: summary.csv and a table; each job one W&B run
    whose config names the sweep and the swept value; each job its report.png."""
    base = [o for o in tiny_overrides if not o.startswith("train.max_steps")]
    args = ["-m", *base, "algo.beta=0,0.04", "train.max_steps=2", "checkpoint.final=false",
            "logger.wandb_mode=offline", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={tmp_path / 'sw'}"]
    out = subprocess.run([sys.executable, "-m", "grpo_cli", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "sw" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["overrides"], r["steps"]) for r in rows] == [("0", "algo.beta=0", "2"), ("1", "algo.beta=0.04", "2")]
    for r in rows:
        assert 0 <= float(r["eval_accuracy"]) <= 1 and float(r["wall_s"]) > 0 and r["train_reward"] != ""
    assert rows[0]["kl"] == "" and float(rows[1]["kl"]) >= 0  # beta=0 loads no reference, logs no KL
    assert "summary.csv" in out.stderr and "algo.beta=0.04" in out.stderr  # the rich table
    name = "sweep-" + "-".join((tmp_path / "sw").parts[-2:])
    for job, beta in (("0", 0), ("1", 0.04)):
        log = (tmp_path / "sw" / job / "train.log").read_text()
        assert f"mode=offline group={name} tags=['algo.beta={beta}']" in log
        assert len(list((tmp_path / "sw" / job / "wandb").glob("offline-run-*"))) == 1
        assert (tmp_path / "sw" / job / "report.png").stat().st_size > 10_000


@pytest.mark.engine
def test_a_sweep_over_objectives_writes_its_summary(tiny_overrides, tmp_path):
    """`grpo-train -m algo=grpo,dapo,cispo,sapo`: one job per objective (1 step each on the tiny
    model), the summary table names each."""
    base = [o for o in tiny_overrides if not o.startswith("train.max_steps")]
    args = ["-m", *base, "algo=grpo,dapo,cispo,sapo", "algo.group_size=4", "algo.beta=0", "train.max_steps=1",
            "checkpoint.final=false", "eval.max_rows=4", f"hydra.sweep.dir={tmp_path / 'sw'}"]
    out = subprocess.run([sys.executable, "-m", "grpo_cli", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "sw" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["overrides"].split(",")[0], r["steps"]) for r in rows] == [
        (f"algo={a}", "1") for a in ("grpo", "dapo", "cispo", "sapo")]
    assert "algo=cispo" in out.stderr  # the table on the console (its width wraps the file name)
