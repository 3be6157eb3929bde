"""A newcomer's mistakes through the real CLI: each is one line on stderr, a non-zero exit, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from grpo_cli.config.paths import config_dir
from grpo_cli.config.validate import register_configs, validate
from tests.conftest import REPO

register_configs()


def _cli(args, cwd, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "grpo_cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def _one_error_line(out, run_dir=None) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0, out.stderr
    assert len(lines) == 1, out.stderr
    assert run_dir is None or not run_dir.exists()
    return lines[0]


UNKNOWN_KEYS = [
    ("+train.max_step=2", "train.max_step is not a config key: did you mean train.max_steps"),
    ("+max_steps=2", "max_steps is not a config key: did you mean train.max_steps"),
    ("+algo.bta=0", "algo.bta is not a config key: did you mean algo.beta?"),
    ("+reward.funcs.correct.wieght=1", "reward.funcs.correct.wieght is not a config key: did you mean reward.funcs.correct.weight?"),
]


@pytest.mark.parametrize("override,message", UNKNOWN_KEYS, ids=[u[0] for u in UNKNOWN_KEYS])
def test_an_unknown_key_is_refused_however_added(override, message, tmp_path):
    out = _cli(["+recipe=gsm8k", override, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert message in _one_error_line(out, tmp_path / "run")


@pytest.mark.parametrize("overrides", [
    ["+sampler.engine_kwargs.max_num_batched_tokens=512"],
    ["algo.objective._target_=grpo_cli.algo.objectives.DualClip", "+algo.objective.clip_c=3"],
    ["+reward.funcs.mine.fn=grpo_cli.rewards.exact.exact_answer"],
    ["+reward.funcs.mine.fn._target_=grpo_cli.rewards.overlong.OverlongPenalty", "+reward.funcs.mine.fn.max_tokens=8",
     "+reward.funcs.mine.fn.cache_tokens=2"],
    ["+optim.optimizer.foreach=false"],
], ids=["engine_kwargs", "objective-kwargs", "reward-name", "reward-target-kwargs", "optimizer-kwargs"])
def test_open_dicts_stay_open(overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        validate(compose(config_name="config", overrides=["+recipe=gsm8k", *overrides]))


# Mistakes Hydra catches before our code runs: (command line, what the one line says).
HYDRA_MISTAKES = [
    (["algo=grpo2"], "grpo-train: error: algo=grpo2: no such option; did you mean algo=grpo? algo options: cispo, dapo, "),
    (["sampler=vllm_cpu"], "grpo-train: error: sampler=vllm_cpu: no such option; did you mean sampler=vllm-cpu?"),
    (["+recipe=gsm8"], "grpo-train: error: recipe=gsm8: no such option; did you mean recipe=gsm8k? recipe options: "),
    (["recipe=demo"], "grpo-train: error: recipe=demo: recipe is not in the default config, add it with +recipe=demo"),
    (["train.max_step=2"], "grpo-train: error: train.max_step is not a config key: did you mean train.max_steps"),
    (["+reward.funcs.x.fn=grpo_cli.rewards.exact.exact_answr"],
     "reward.funcs.x.fn='grpo_cli.rewards.exact.exact_answr' is invalid: grpo_cli.rewards.exact has no exact_answr; "
     "did you mean grpo_cli.rewards.exact.exact_answer?"),
    (["-m", "hydra/launcher=slurm", "algo.beta=0,0.1"], "grpo-train: error: hydra/launcher=slurm: not on a SLURM cluster: srun not found"),
]


@pytest.mark.parametrize("args,message", HYDRA_MISTAKES, ids=[" ".join(m[0]) for m in HYDRA_MISTAKES])
def test_a_mistake_is_one_error_line(args, message, tmp_path):
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"}  # no srun here
    out = _cli([*args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env)
    assert message in _one_error_line(out, tmp_path / "run")
    assert not (tmp_path / "sweep").exists()


def test_resuming_a_two_rank_run_with_one_rank_is_one_line(tmp_path):
    """Said once, by grpo-train, before any rank starts (it was said by each rank, between launcher lines)."""
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "step_2"
    checkpoint.mkdir(parents=True)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        OmegaConf.save(compose(config_name="config", overrides=["train.nproc=2"]), checkpoint / "config.yaml")
    (checkpoint / "manifest.json").write_text('{"step": 2, "world_size": 2}')
    out = _cli([f"resume={run}", "train.nproc=1"], cwd=tmp_path)
    line = _one_error_line(out)
    assert line.startswith("grpo-train: error: train.nproc=1 differs from the checkpoint's 2; a resumed run may change only ")


def test_help_shows_every_option_with_its_meaning_and_the_resumable_keys(tmp_path):
    """`grpo-train --help`: `key = value  # docstring` for every schema key, then RESUMABLE (the one list)."""
    from grpo_cli.config.describe import describe
    from grpo_cli.state.checkpoint import RESUMABLE

    out = _cli(["+recipe=demo", "--help"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "== Configuration groups ==" in lines and "== Options ==" in lines
    keys = [line.split(" = ", 1)[0] for line in describe(None)]
    shown = {line.split(" = ", 1)[0]: line for line in lines if " = " in line}
    assert len(keys) > 100 and set(keys) <= set(shown)
    assert all("  # " in shown[k] for k in keys), [k for k in keys if "  # " not in shown[k]]
    assert shown["algo.beta"] == ("algo.beta = 0.04  # Weight of the KL penalty to the frozen reference (its form: `kl`); "
                                  "0 loads no reference model.")
    assert shown["model.path"].startswith("model.path = ???")  # the demo recipe leaves it to the command line
    assert f"may change only: {', '.join(RESUMABLE[1:])}." in out.stdout
