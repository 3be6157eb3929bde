"""Data parallelism on torch.distributed (gloo, real processes started by torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node"]  # + N, --standalone, ...


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _run(cmd: list[str], timeout: int = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO)


@pytest.fixture(scope="module")
def learner_runs(tiny_overrides, tmp_path_factory):
    """The harness once in one process and once as 2 torchrun ranks, on the same recorded batch."""
    out = tmp_path_factory.mktemp("dist_learner")
    overrides = json.dumps(tiny_overrides + ["sampler.temperature=0.7", "train.micro_batch_size=3",
                                             "model.dtype=float32"])
    harness = str(REPO / "tests" / "dist_learner_harness.py")
    one = _run([sys.executable, harness, str(out / "one"), overrides])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(TORCHRUN + ["2", "--standalone", harness, str(out / "two"), overrides])
    assert two.returncode == 0, two.stderr[-3000:]
    return (torch.load(out / "one" / "rank0.pt"), torch.load(out / "two" / "rank0.pt"),
            torch.load(out / "two" / "rank1.pt"))


VARIANTS = {"grpo_seq_mean": 1e-6, "dapo_token_mean": 1e-6, "dr_grpo_constant": 1e-6, "grpo_mu2": 1e-6,
            "grpo_adamw": 1e-5}  # variant -> tolerance on every parameter (AdamW: see the harness)


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_ranks_train_exactly_as_one_process_on_the_same_global_batch(learner_runs, variant):
    """Parameters after 1 and 3 steps equal to 1e-6 for every aggregation and for mu > 1: the
    weights normalise by both ranks' rows and the gradients are summed."""
    one, rank0, rank1 = (r[variant] for r in learner_runs)
    for step in (1, 3):
        for name, p in one["params"][step].items():
            assert torch.allclose(rank0["params"][step][name], p, atol=VARIANTS[variant], rtol=0), (variant, step, name)
            assert torch.equal(rank0["params"][step][name], rank1["params"][step][name]), (variant, step, name)
    moved = max((one["params"][3][k] - one["params"][1][k]).abs().max().item() for k in one["params"][1])
    assert moved > 1e-4  # steps 2-3 moved the weights: the comparison is not vacuous


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_ranks_log_the_one_process_metrics(learner_runs, variant):
    """Every learner metric rank 0 would log equals the 1-process value. learner/pad_frac is left
    out: it measures how each rank's own micro-batches pack, which differs by design."""
    one, rank0, _ = (r[variant] for r in learner_runs)
    for m1, m2 in zip(one["metrics"], rank0["metrics"]):
        assert set(m1) == set(m2)
        for k in m1:
            if k != "learner/pad_frac":
                assert m2[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-6), (variant, k)
