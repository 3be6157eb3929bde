"""Faults during a run, through the real engine: rewards that raise, NaN/Inf updates, W&B down."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from grpo_cli.rewards import RewardError
from grpo_cli.state.stop import RunStopped
from grpo_cli.train import run
from tests.conftest import compose, make_logger

pytestmark = pytest.mark.engine

CALLS = {"n": 0}


def _reward(name: str) -> list[str]:
    CALLS["n"] = 0
    return ["~reward.funcs.correct", f"+reward.funcs.{name}.fn=tests.test_faults.{name}", f"reward.accuracy={name}"]


def always_raises(prompts, completions, **_):
    raise ZeroDivisionError("boom")


def flaky(prompts, completions, **_):
    """Fails on every third call (eval before step 1 is call 1, so steps 2 and 5 fail)."""
    CALLS["n"] += 1
    if CALLS["n"] % 3 == 0:
        raise ConnectionError("judge unavailable")
    return [float(c[:1] == "1") for c in completions]


def infinite(prompts, completions, **_):
    return [math.inf] * len(completions)


def inf_on_step_2(prompts, completions, **_):
    CALLS["n"] += 1
    return [math.inf if CALLS["n"] == 3 else float(c[:1] == "1") for c in completions]


def too_short(prompts, completions, **_):
    return [1.0]


def _steps(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if "reward/mean" in m]


def test_a_reward_that_fails_now_and_then_never_stops_the_run(tiny_overrides, tmp_path, capsys):
    run(compose(tiny_overrides + _reward("flaky") + ["train.max_steps=6"]), run_dir=tmp_path)
    steps = _steps(tmp_path)
    assert [m["reward/flaky/errors"] for m in steps] == [0, 1, 0, 0, 1, 0]
    assert all(math.isnan(m["reward/flaky/mean"]) for m in steps if m["reward/flaky/errors"])
    err = capsys.readouterr().err
    assert err.count("grpo-train: warning: reward 'flaky' raised ConnectionError: judge unavailable") == 1
    assert (tmp_path / "checkpoints" / "final" / "manifest.json").exists()


def test_a_reward_that_always_fails_stops_with_a_checkpoint(tiny_overrides, tmp_path):
    cfg = compose(tiny_overrides + _reward("always_raises") + ["train.max_steps=6"])
    with pytest.raises(RunStopped) as err:
        run(cfg, run_dir=tmp_path)
    # call 1 is the eval before training, calls 2 and 3 are steps 1 and 2
    assert str(err.value) == (
        f"stopped after step 2: reward 'always_raises' failed on 3 calls in a row (ZeroDivisionError: boom); "
        f"checkpoint {tmp_path}/checkpoints/step_2; continue with: grpo-train resume={tmp_path}")
    assert err.value.exit_code == 1
    assert (tmp_path / "checkpoints" / "step_2" / "manifest.json").exists()


def test_a_reward_of_the_wrong_length_is_a_one_line_error(tiny_overrides, tmp_path):
    with pytest.raises(RewardError, match=r"^reward 'too_short' returned 1 values for 16 completions$"):
        run(compose(tiny_overrides + _reward("too_short")), run_dir=tmp_path)


def test_nan_updates_are_skipped_and_stop_after_max_bad_steps(tiny_overrides, tiny_model, tmp_path):
    cfg = compose(tiny_overrides + _reward("infinite") + ["train.max_steps=6", "train.max_bad_steps=3"])
    with pytest.raises(RunStopped, match=r"^stopped after step 3: 3 optimiser steps in a row had NaN/Inf "
                                         r"gradients \(train.max_bad_steps=3\); checkpoint .*step_3"):
        run(cfg, run_dir=tmp_path)
    assert [m["bad_steps"] for m in _steps(tmp_path)] == [1, 2, 3]
    # every update was skipped: the checkpoint holds the starting weights
    before, after = load_file(tiny_model / "model.safetensors"), load_file(tmp_path / "checkpoints/step_3/model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in after)


def test_one_nan_update_is_skipped_and_the_run_goes_on(tiny_overrides, tmp_path):
    run(compose(tiny_overrides + _reward("inf_on_step_2") + ["train.max_steps=4"]), run_dir=tmp_path)
    steps = _steps(tmp_path)
    assert [m["bad_steps"] for m in steps] == [0, 1, 1, 1]
    assert math.isnan(steps[1]["grad_norm"]) and all(math.isfinite(steps[i]["grad_norm"]) for i in (0, 2, 3))
    assert all(math.isfinite(m["loss"]) for i, m in enumerate(steps) if i != 1)


class _Broken:
    id = "broken"

    def log(self, *a, **k):
        raise ConnectionError("W&B service error 503")

    def finish(self, *a, **k):
        raise ConnectionError("still down")


def test_wandb_that_cannot_start_or_log_warns_once_and_logs_locally(tiny_overrides, tmp_path, monkeypatch, capsys):
    import wandb

    cfg = compose(tiny_overrides + ["logger.wandb_mode=online"])

    def no_network(**kwargs):
        raise wandb.errors.CommError("failed to reach api.wandb.ai")

    monkeypatch.setattr(wandb, "init", no_network)
    logger = make_logger(cfg, tmp_path, total_steps=2)
    logger.log(1, {"loss": 1.0})
    logger.close()
    assert "W&B could not start (CommError: failed to reach api.wandb.ai)" in capsys.readouterr().err
    monkeypatch.setattr(wandb, "init", lambda **kw: _Broken())
    logger = make_logger(cfg, tmp_path, total_steps=2)
    for step in (2, 3):
        logger.log(step, {"loss": 1.0})
    logger.close()
    assert capsys.readouterr().err.count("W&B could not log (ConnectionError: W&B service error 503)") == 1
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_wandb_online_with_a_bad_key_and_no_server_does_not_stop_the_run(tiny_overrides, tmp_path, monkeypatch, capsys):
    """The real thing, no stand-ins: W&B online, a key that cannot authenticate, a server that refuses
    connections. W&B gives up after WANDB_INIT_TIMEOUT (90 s by default; 5 s here)."""
    for key, value in {"WANDB_MODE": "online", "WANDB_API_KEY": "bad-key-" + "0" * 32,
                       "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_INIT_TIMEOUT": "5"}.items():
        monkeypatch.setenv(key, value)
    run(compose(tiny_overrides + ["logger.wandb_mode=online"]), run_dir=tmp_path)
    assert capsys.readouterr().err.count("W&B could not start") == 1
    assert [m["step"] for m in _steps(tmp_path)] == [1, 2]
