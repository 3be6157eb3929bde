"""scripts/gpu_check.py is what a task with a GPU runs first; its CPU smoke mode keeps it from rotting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.engine


def test_gpu_check_smoke_runs_the_gsm8k_recipe_and_reports(tmp_path):
    out = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--shape", "tiny", "--device", "cpu", "--steps", "2", "--skip-tests",
         "--work", str(tmp_path), "--out", str(tmp_path / "r.json")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["failures"] == [] and len(r["steps"]) == 2
    assert 0 < r["learner_mfu"] < 1.5 and r["median"]["logprob_drift/max"] < 1e-4  # fp32 on both sides
    assert "gpu_check: ok" in out.stdout


def test_gpu_check_without_cuda_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = subprocess.run([sys.executable, "scripts/gpu_check.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no CUDA device here" in out.stderr and "Traceback" not in out.stderr
