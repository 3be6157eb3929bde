"""Checkpoints on disk: atomic, complete or ignored, pruned to keep_last, a clear error when the disk
fails; and the config a resumed run may (and may not) change. No engine needed."""

from __future__ import annotations

import json
import os

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_cli.config.validate import ConfigError
from grpo_cli.state import checkpoint as run_state
from grpo_cli.state.checkpoint import CheckpointError, RunState
from tests.conftest import compose


@pytest.fixture(scope="module")
def policy_and_tokenizer(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)


def _state(step: int) -> RunState:
    return RunState(step=step, learner={"x": torch.arange(3)}, data={"epoch": 0, "offset": 4 * step},
                    rng=run_state.rng_state(), log_sizes={"metrics.jsonl": 10 * step})


def _save(run_dir, step, policy_and_tokenizer, cfg, name=None, keep_last=2):
    policy, tok = policy_and_tokenizer
    return run_state.save(run_dir / "checkpoints" / (name or f"step_{step}"), _state(step), policy, tok, cfg, keep_last)


def test_checkpoints_are_complete_pruned_and_loadable(tiny_overrides, tmp_path, policy_and_tokenizer):
    cfg = compose(tiny_overrides)
    for step in range(1, 5):
        _save(tmp_path, step, policy_and_tokenizer, cfg)
    _save(tmp_path, 4, policy_and_tokenizer, cfg, name="final")
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["final", "step_3", "step_4"]  # keep_last=2, plus final
    manifest = json.loads((ckpts / "step_4" / "manifest.json").read_text())
    assert manifest["step"] == 4 and {"model.safetensors", "trainer_state.pt", "config.yaml"} <= set(manifest["files"])
    assert all((ckpts / "step_4" / f).stat().st_size == n for f, n in manifest["files"].items())
    assert {"torch", "transformers", "python"} <= set(manifest["versions"])
    state = run_state.load(ckpts / "step_4")
    assert state.data == {"epoch": 0, "offset": 16} and torch.equal(state.learner["x"], torch.arange(3))
    fresh = AutoModelForCausalLM.from_pretrained(ckpts / "step_4")  # the HF export loads as is
    run_state.load_policy(fresh, ckpts / "step_4")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 policy_and_tokenizer[0].state_dict().values()))


def test_a_half_written_checkpoint_is_never_loaded_and_is_removed(tiny_overrides, tmp_path, policy_and_tokenizer):
    cfg = compose(tiny_overrides)
    _save(tmp_path, 1, policy_and_tokenizer, cfg)
    half = tmp_path / "checkpoints" / ".step_2.tmp"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    torn = tmp_path / "checkpoints" / "step_3"  # a copy someone made by hand, without its manifest
    torn.mkdir()
    assert run_state.find_resume("auto", tmp_path) == tmp_path / "checkpoints" / "step_1"
    assert not half.exists() and not torn.exists()
    assert run_state.find_resume("auto", tmp_path / "elsewhere") is None  # auto: nothing there, start fresh
    assert run_state.find_resume(None, tmp_path) is None


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_stays(tiny_overrides, tmp_path,
                                                                        policy_and_tokenizer, monkeypatch):
    cfg = compose(tiny_overrides)
    _save(tmp_path, 1, policy_and_tokenizer, cfg)

    def disk_full(*a, **k):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"^could not write checkpoint .*step_2: No space left on device; "
                                              r"step_1 \(step 1\) is intact$"):
        _save(tmp_path, 2, policy_and_tokenizer, cfg)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1"]
    monkeypatch.undo()
    assert run_state.load(tmp_path / "checkpoints" / "step_1").step == 1


def test_logs_are_cut_back_to_the_checkpoint_and_the_cut_is_kept(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    run_state.cut_logs(tmp_path, {"metrics.jsonl": len('{"step": 1}\n')})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert (tmp_path / "metrics.jsonl.cut").read_text() == '{"step": 2}\n{"step": 3}\n'


@pytest.fixture
def checkpoint(tiny_overrides, tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    OmegaConf.save(compose(tiny_overrides), d / "config.yaml", resolve=True)
    return d


def test_a_resumed_run_may_extend_steps_and_change_logging(tiny_overrides, checkpoint):
    overrides = ["resume=auto", "train.max_steps=10", "logger.completions_every=1", "checkpoint.every=5"]
    cfg = run_state.resumed_config(compose(tiny_overrides + overrides), checkpoint, overrides)
    assert (cfg.train.max_steps, cfg.logger.completions_every, cfg.checkpoint.every) == (10, 1, 5)
    # only `resume=DIR` on the command line: everything else comes from the checkpoint
    cfg = run_state.resumed_config(compose(["resume=auto"]), checkpoint, ["resume=auto"])
    assert cfg.algo.group_size == 4 and cfg.model.dtype == "float32"


@pytest.mark.parametrize("override,key", [
    ("algo.group_size=8", "algo.group_size"), ("optim.lr=0.5", "optim.lr"),
    ("data.path=/other.jsonl", "data.path"), ("model=qwen2.5-0.5b-instruct", "model."), ("seed=7", r"(sampler\.)?seed"),
])
def test_a_resumed_run_may_not_change_what_the_checkpoint_depends_on(tiny_overrides, checkpoint, override, key):
    with pytest.raises(ConfigError, match=rf"^{key}.*differs from the checkpoint's .*a resumed run may change only"):
        run_state.resumed_config(compose(tiny_overrides + [override]), checkpoint, [override])
    with pytest.raises(ConfigError, match=rf"^{key}"):  # the same when the whole config is compared
        run_state.resumed_config(compose(tiny_overrides + [override]), checkpoint)
