"""scripts/gpu_check.py is what a task with a GPU runs first; its CPU smoke mode keeps it from rotting."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.engine


def test_gpu_check_smoke_runs_the_cpu_subset_of_the_checklist(tmp_path):
    out = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--smoke", "--work", str(tmp_path),
         "--out", str(tmp_path / "r.json")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    items = json.loads((tmp_path / "r.json").read_text())["items"]
    assert {n: r["status"] for n, r in items.items()} == {
        "colocated-sleep0": "pass", "colocated-sleep1": "skipped", "colocated-sleep2": "skipped",
        "torchrun2-ddp": "skipped", "torchrun2-fsdp2": "skipped", "server-nccl": "skipped",
        "resume-fewer-gpus": "skipped", "pytest-gpu": "skipped"}
    assert all(r["why"] for r in items.values() if r["status"] == "skipped")
    recipe = json.loads((tmp_path / "checklist" / "colocated-sleep0.json").read_text())
    assert len(recipe["steps"]) == 2 and recipe["median"]["logprob_drift/max"] < 1e-4  # fp32 on both sides
    assert recipe.get("learner_mfu_error") or 0 < recipe["learner_mfu"] <= 1
    assert "gpu_check: " in out.stdout and "ok" in out.stdout.splitlines()[-1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_an_mfu_over_100_percent_is_reported_as_a_measurement_error():
    mfu = _script("mfu")
    assert mfu.mfu(60e9, 1.0, 100.0) == (pytest.approx(0.6), None)
    value, error = mfu.mfu(151e9, 1.0, 100.0)
    assert value is None and "measurement error" in error
    assert _script("gpu_check").mfu is mfu.mfu  # the GPU check reports through the same rule


def test_the_matmul_peak_is_the_best_round_of_the_best_size():
    mfu = _script("mfu")
    probe = mfu.matmul_peak(sizes=(64, 128), rounds=2, round_s=0.01, max_wait=0)
    assert probe["gflops"] > 0 and probe["n"] in (64, 128) and 0 <= probe["busy"] <= 1


def test_the_learner_flops_count_lm_head_only_where_a_completion_token_is_predicted():
    mfu = _script("mfu")
    # 2 prompts of 10 tokens x G=4 completions of 5: the backbone sees 2 x 10 + 8 x 4 tokens, lm_head 8 x 5.
    assert mfu.learner_flops(100, 30, 2 * 10 + 8 * 4, 8 * 5, 8) == 8 * (100 * 52 + 30 * 40)


def test_gpu_check_without_cuda_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = subprocess.run([sys.executable, "scripts/gpu_check.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no CUDA device here" in out.stderr and "Traceback" not in out.stderr
