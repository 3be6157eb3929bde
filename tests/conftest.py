"""Shared fixtures. Engine-backed fixtures are session-scoped: one vLLM engine for the suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# vLLM must run its engine in this process (the learner pushes weights into it), and W&B must
# never try the network from a test.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]

from grpo_cli.config.validate import compose  # noqa: E402,F401  (tests import it from here)


def make_learner(cfg, total_optim_steps: int, dist=None):
    """The Learner a run of `cfg` builds, from the same config sections grpo_cli/train.py passes."""
    from grpo_cli.learner.learner import Learner

    return Learner(cfg.model, cfg.algo, cfg.optim, cfg.train, cfg.sampler.temperature, cfg.seed, total_optim_steps, dist)


def make_logger(cfg, run_dir, total_steps: int, rows: tuple[int, int | None] = (0, None)):
    """The RunLogger a run of `cfg` builds (as grpo_cli/train.py does), with `rows` train/eval rows."""
    from omegaconf import OmegaConf

    from grpo_cli.observe.logger import RunHeader, RunLogger

    header = RunHeader(cfg.model.path, cfg.data.path, rows[0], rows[1], total_steps, cfg.train.prompts_per_step,
                       cfg.algo.group_size, cfg.run_name)
    accuracy = cfg.reward.accuracy or next(iter(cfg.reward.funcs))
    return RunLogger(cfg.logger, run_dir, header, OmegaConf.to_container(cfg, resolve=True), accuracy)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Qwen2 with the character tokenizer, saved with save_pretrained."""
    from examples.demo.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny"), hidden_size=64, intermediate_size=128,
                     num_layers=2, num_heads=2, num_kv_heads=1, seed=0)


@pytest.fixture(scope="session")
def arithmetic_data(tmp_path_factory) -> Path:
    from examples.demo.arithmetic import make_rows, write_jsonl

    return write_jsonl(make_rows(200, seed=0), tmp_path_factory.mktemp("data") / "train.jsonl")


@pytest.fixture(scope="session")
def tiny_overrides(tiny_model, arithmetic_data) -> list[str]:
    """A complete small run: every engine test uses these sampler settings, so they share one engine."""
    return [
        "model=tiny-local", f"model.path={tiny_model}", "data=arithmetic", f"data.path={arithmetic_data}",
        "data.eval_holdout=16", "reward=arithmetic", "sampler=vllm-cpu", "sampler.max_tokens=8",
        "sampler.max_model_len=64", "logger=none", "train.prompts_per_step=4", "algo.group_size=4",
        "train.micro_batch_size=8", "train.max_steps=2", "optim.lr=1e-3", "eval.max_rows=16",
    ]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def learner_device(request) -> str:
    """`train.device` for tests that run on the CPU here and, under the `gpu` marker, on CUDA too."""
    if request.param == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("the gpu variant needs CUDA (this machine has none)")
    return request.param
