"""Kill a real `grpo-train` subprocess at several points, resume it, and get the uninterrupted run's
numbers exactly: every step's metrics, the logged completions and the final weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.pause import CALLBACK

pytestmark = pytest.mark.engine

GRPO_TRAIN = [sys.executable, "-m", "grpo_cli"]
STEPS = 4
WALL_CLOCK = ("time/", "tokens_per_s")  # the only numbers allowed to differ


def _args(tiny_overrides, run_dir: Path) -> list[str]:
    base = [o for o in tiny_overrides if not o.startswith("train.max_steps")]
    return base + [f"train.max_steps={STEPS}", "checkpoint.every=1", "logger.completions_every=1",
                   f"hydra.run.dir={run_dir}", CALLBACK]


def _env(**extra) -> dict:
    return os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])} | extra


def _metrics(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if not k.startswith(WALL_CLOCK)} for m in lines]


def _train(args, **env) -> subprocess.CompletedProcess:
    out = subprocess.run(GRPO_TRAIN + args, capture_output=True, text=True, timeout=300, env=_env(**env))
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _kill_at(args, point: str, log: Path) -> None:
    """Start a run that pauses at `point` (tests/pause.py, a `train.callbacks` entry), SIGKILL it there."""
    with open(log, "w") as err:
        proc = subprocess.Popen(GRPO_TRAIN + args, stdout=subprocess.DEVNULL, stderr=err,
                                env=_env(GRPO_CLI_TEST_PAUSE=point))
        deadline = time.monotonic() + 240
        while f"paused at {point}" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "never reached " + point
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def reference(tiny_overrides, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    _train(_args(tiny_overrides, run_dir))
    return run_dir


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    got, want = _metrics(run_dir), _metrics(reference)
    assert [m["step"] for m in got] == [m["step"] for m in want]  # each step once, in order
    for g, w in zip(got, want):
        assert g == w, {k: (g.get(k), w.get(k)) for k in set(g) | set(w) if g.get(k) != w.get(k)}
    assert (run_dir / "completions.jsonl").read_text() == (reference / "completions.jsonl").read_text()
    a = load_file(run_dir / "checkpoints" / "final" / "model.safetensors")
    b = load_file(reference / "checkpoints" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# (kill point, how the run is resumed). `rollout@2`: after step 2's completions were sampled,
# before they were scored; `learner@3`: after the optimiser stepped, before the engine got the
# new weights; `checkpoint@2`: half-way through writing step 2's checkpoint (weights written,
# trainer state not yet), so the resume must fall back to step 1.
@pytest.mark.parametrize("point,how", [pytest.param("rollout@2", "dir", marks=pytest.mark.slow),  # ~55 s; like learner@3
                                       ("learner@3", "auto"), ("checkpoint@2", "dir")])
def test_killed_run_resumes_bit_identical(point, how, tiny_overrides, reference, tmp_path):
    run_dir = tmp_path / "run"
    args = _args(tiny_overrides, run_dir)
    _kill_at(args, point, tmp_path / "killed.log")
    ckpts = run_dir / "checkpoints"
    if point.startswith("checkpoint"):
        assert (ckpts / ".step_2.tmp").is_dir() and not (ckpts / ".step_2.tmp" / "manifest.json").exists()
    if how == "dir":  # only the run dir: the rest of the config comes from the checkpoint
        out = _train([f"resume={run_dir}"])
    else:  # the same command again, as a requeued SLURM job would run it
        out = _train(args + ["resume=auto"])
    step = 1 if point == "checkpoint@2" else int(point[-1]) - 1  # the newest complete checkpoint
    assert f"resuming from step {step} (checkpoint {ckpts / f'step_{step}'})" in out.stderr  # the console says so
    assert not (ckpts / ".step_2.tmp").exists()  # the half-written checkpoint was cleaned up
    _assert_same_run(run_dir, reference)
    if point.startswith("checkpoint"):  # step 2 was logged, its checkpoint was not: its lines were cut aside
        cut = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl.cut").read_text().splitlines()]
        assert cut == [2]
    assert sorted(p.name for p in ckpts.iterdir()) == ["final", f"step_{STEPS - 1}", f"step_{STEPS}"]  # keep_last=2


def _start_paused(args, point: str, log: Path, pause_s: float) -> subprocess.Popen:
    err = open(log, "w")
    proc = subprocess.Popen(GRPO_TRAIN + args, stdout=subprocess.DEVNULL, stderr=err,
                            env=_env(GRPO_CLI_TEST_PAUSE=point, GRPO_CLI_TEST_PAUSE_S=str(pause_s)))
    deadline = time.monotonic() + 240
    while f"paused at {point}" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    return proc


def test_sigterm_finishes_the_step_checkpoints_and_resumes_exactly(tiny_overrides, reference, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "term.log"
    proc = _start_paused(_args(tiny_overrides, run_dir), "learner@2", log, pause_s=2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    last = log.read_text().strip().splitlines()[-1]
    assert last == (f"grpo-train: stopped after step 2: SIGTERM received; checkpoint {run_dir}/checkpoints/step_2; "
                    f"continue with: grpo-train resume={run_dir}")
    assert (run_dir / "checkpoints" / "step_2" / "manifest.json").exists()
    assert [m["step"] for m in _metrics(run_dir)] == [0, 1, 2]
    _train([f"resume={run_dir}"])
    _assert_same_run(run_dir, reference)


def test_a_second_ctrl_c_exits_at_once(tiny_overrides, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "int.log"
    proc = _start_paused(_args(tiny_overrides, run_dir), "learner@2", log, pause_s=30)
    proc.send_signal(signal.SIGINT)
    while "SIGINT received" not in log.read_text():
        time.sleep(0.05)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130 and time.monotonic() - t0 < 10  # not after the 30 s pause
    assert "second SIGINT: exiting now, without a checkpoint" in log.read_text()
    assert not (run_dir / "checkpoints" / "step_2").exists()
