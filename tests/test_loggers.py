"""TensorBoard alone or beside W&B, the wall time, and the report PNG every run writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from grpo_cli.observe.report import find_runs, run_labels
from tests.conftest import compose, make_logger

PNG = b"\x89PNG\r\n\x1a\n"


def _log_a_run(cfg, run_dir, steps=3):
    logger = make_logger(cfg, run_dir, total_steps=steps, rows=(100, 10))
    logger.log(0, {"eval/accuracy": 0.25, "eval/reward": 0.25})
    for step in range(1, steps + 1):
        logger.log(step, {"reward/mean": 0.1 * step, "reward/correct/mean": 0.1 * step, "kl/mean": 0.01 * step,
                          "completion_len/mean": 5.0 + step, "clip_frac": 0.0, "time/step_s": 1.0})
    logger.log_completions(steps, [{"prompt": "1+2=", "completion": "3|x", "reward": 1.0}])
    logger.log(steps, {"eval/accuracy": 0.5, "eval/reward": 0.5})
    logger.close()


def _scalars(run_dir):
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("wandb_mode", ["disabled", "offline"])
def test_tensorboard_alone_or_beside_wandb(tiny_overrides, tmp_path, wandb_mode):
    cfg = compose(tiny_overrides + ["logger=tensorboard", f"logger.wandb_mode={wandb_mode}"])
    _log_a_run(cfg, tmp_path)
    acc, scalars = _scalars(tmp_path)
    assert [s for s, _ in scalars["reward/mean"]] == [1, 2, 3]
    assert scalars["reward/mean"][-1][1] == pytest.approx(0.3)
    assert [s for s, _ in scalars["eval/accuracy"]] == [0, 3]
    assert "completions/text_summary" in acc.Tags()["tensors"]
    assert bool(list((tmp_path / "wandb").glob("offline-run-*"))) == (wandb_mode == "offline")


def test_every_run_writes_its_report_and_wall_time(tiny_overrides, tmp_path):
    _log_a_run(compose(tiny_overrides), tmp_path)  # logger=none: no W&B, no TensorBoard
    assert not (tmp_path / "tensorboard").exists()
    report = (tmp_path / "report.png").read_bytes()
    assert report.startswith(PNG) and len(report) > 10_000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 3 and summary["time/wall_s"] > 0


def test_grpo_report_overlays_runs_and_sweeps(tiny_overrides, tmp_path):
    cfg = compose(tiny_overrides)
    sweep = tmp_path / "sweep"
    for job, beta in enumerate(["0", "0.04"]):
        job_dir = sweep / str(job)
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(f"- model=tiny-local\n- algo.beta={beta}\n")
        _log_a_run(cfg, job_dir)
    (tmp_path / "single").mkdir()
    _log_a_run(cfg, tmp_path / "single")
    assert find_runs([sweep]) == [sweep / "0", sweep / "1"]
    assert run_labels(find_runs([sweep])) == ["algo.beta=0", "algo.beta=0.04"]

    out = tmp_path / "cmp.png"
    done = subprocess.run([sys.executable, "-m", "grpo_cli.observe.report", str(sweep), str(tmp_path / "single"), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000

    bad = subprocess.run([sys.executable, "-m", "grpo_cli.observe.report", str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("grpo-report: error: ") and "Traceback" not in bad.stderr


def test_eval_only_header_says_so_instead_of_training_steps(tmp_path, capsys):
    from tests.conftest import compose, make_logger

    cfg = compose(["model.path=m", "data.path=d.jsonl", "logger=none", "eval_only=true"])
    make_logger(cfg, tmp_path, 0, (10, 5))  # grpo_cli/train.py passes 0 steps under eval_only
    err = capsys.readouterr().err
    assert "evaluation only" in err and "of B x G" not in err


def test_without_a_progress_bar_the_console_still_shows_the_train_reward(tiny_overrides, tmp_path, capsys):
    """logger=none has no bar: every logger.print_every steps (and the last) one plain line says how training goes."""
    cfg = compose(tiny_overrides + ["logger.print_every=2"])  # logger=none: no bar
    logger = make_logger(cfg, tmp_path, total_steps=5)
    capsys.readouterr()
    for step in range(1, 6):
        logger.log(step, {"reward/mean": 0.1 * step, "reward/correct/mean": 0.5, "kl/mean": 0.01, "time/step_s": 1.0})
    logger.close()
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("step ")]
    assert lines == ["step 2/5: reward 0.200  acc 0.500  kl 0.0100  1.00 s/step",
                     "step 4/5: reward 0.400  acc 0.500  kl 0.0100  1.00 s/step",
                     "step 5/5: reward 0.500  acc 0.500  kl 0.0100  1.00 s/step"]
