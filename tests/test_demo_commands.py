"""`make demo` ends with commands a newcomer can paste: the venv's grpo-train, the demo's real paths."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from omegaconf import OmegaConf

from examples.demo import tools_demo
from examples.demo.__main__ import CACHE, SFT_STEPS, next_commands
from tests.conftest import REPO


def test_make_demo_prints_commands_that_compose_with_the_real_paths(tmp_path):
    paths = {"model": CACHE / f"sft-{SFT_STEPS}", "train": CACHE / "train.jsonl", "eval": CACHE / "eval.jsonl"}
    text = next_commands(paths)
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith(".venv/bin/")]
    assert [c.split()[0] for c in commands] == [".venv/bin/grpo-train", ".venv/bin/grpo-eval"]
    assert "source .venv/bin/activate" in text
    args = shlex.split(commands[0])[1:]
    assert "model.path=.cache/demo/sft-30" in args
    out = subprocess.run([sys.executable, "-m", "grpo_cli", *args, "--cfg", "job"], cwd=tmp_path, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert OmegaConf.create(out.stdout).train.max_steps == 20


def test_the_demo_recipe_names_the_paths_make_demo_writes():
    header = (REPO / "recipes" / "demo.yaml").read_text()
    assert f"model.path={CACHE}/sft-{SFT_STEPS} " in header


def test_the_tools_demo_recipe_names_the_paths_make_demo_tools_writes():
    header = (REPO / "recipes" / "tools_demo.yaml").read_text()
    model = f"{tools_demo.CACHE}/sft-{tools_demo.SFT_STEPS}-{tools_demo.TOOL_FRACTION:g}"
    assert f"model.path={model} " in header and f"data.path={tools_demo.CACHE}/train.jsonl " in header


def test_the_tools_demo_reads_accuracy_and_tool_use_before_and_after():
    metrics = [{"train/reward": 0.1}, {"eval/accuracy": 0.3, "eval/tools/used_frac": 0.4},
               {"eval/accuracy": 0.5}, {"eval/accuracy": 0.8, "eval/tools/used_frac": 1.0}]
    assert tools_demo.summary(metrics) == (0.3, 0.8, 0.4, 1.0)
