"""Remote code runs only when the config says so; no secret from the environment reaches any file a
run writes (config, metrics, completions, checkpoints, the W&B run folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_cli.learner.models import ModelLoadError, check_model
from tests.conftest import compose

SECRETS = {
    "WANDB_API_KEY": "fake-wandb-key-5f3a9c0e1b2d4f6a8c0e1b2d4f6a8c0e1b2d4f6a",
    "HF_TOKEN": "hf_fakeTokenDoNotLeak0123456789",
    "HUGGING_FACE_HUB_TOKEN": "hf_fakeHubTokenDoNotLeak98765",
    "OPENAI_API_KEY": "sk-fake-openai-DoNotLeak-424242",
    "MY_REWARD_SERVICE_PASSWORD": "fake-password-DoNotLeak-777",
}


def test_trust_remote_code_is_off_unless_the_config_says_true(tmp_path):
    assert compose(["model.path=x"]).model.trust_remote_code is False
    model = tmp_path / "custom"
    model.mkdir()
    marker = tmp_path / "remote_code_ran"
    # A checkpoint that ships its own config class: loading it with trust_remote_code would run this.
    (model / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    (model / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    cfg = compose(["model=tiny-local", f"model.path={model}"])
    with pytest.raises(ModelLoadError, match=r"needs its own code to run; set model.trust_remote_code=true only if you trust it"):
        check_model(cfg.model, 256, 64)
    assert not marker.exists()


def _every_file(root: Path):
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


@pytest.mark.engine
def test_no_secret_reaches_any_file_the_run_writes(tiny_overrides, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides + ["logger.wandb_mode=offline", "logger.completions_every=1", "checkpoint.every=1",
                             f"hydra.run.dir={run_dir}"]
    env = os.environ | SECRETS | {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, "-m", "grpo_cli", *args], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    files = list(_every_file(run_dir))
    names = {p.name for p in files}
    assert {"config.yaml", "metrics.jsonl", "completions.jsonl", "trainer_state.pt", "model.safetensors"} <= names
    assert any(p.suffix == ".wandb" for p in files)  # the W&B run folder is searched too
    for path in files:
        data = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} leaked into {path.relative_to(run_dir)}"
