"""Every shipped config composes; bad input fails with one clear line and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from grpo_cli.config.paths import config_dir
from grpo_cli.config.validate import ConfigError, register_configs, validate
from tests.conftest import REPO

register_configs()
CONF = config_dir()
GROUPS = ["model", "data", "reward", "sampler", "optim", "algo", "filter", "logger"]
GRPO_TRAIN = [sys.executable, "-m", "grpo_cli"]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if option in ("tiny-local", "arithmetic") and group in ("model", "data"):
        overrides.append(f"{group}.path={tmp_path}")  # these options require a local path
    if option == "vllm-server":
        overrides.append("sampler.devices=1")  # its own GPU: a GPU machine refuses the learner's
    cfg = _compose(overrides)
    OmegaConf.resolve(cfg)
    validate(cfg)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (REPO / "recipes").glob("*.yaml")))
def test_every_recipe_composes_and_validates(recipe, tmp_path):
    cfg = _compose([f"+recipe={recipe}"])
    OmegaConf.resolve(cfg)
    missing = OmegaConf.missing_keys(cfg)
    assert missing <= {"model.path", "data.path"}, missing  # a recipe may leave only local paths open
    cfg = _compose([f"+recipe={recipe}"] + [f"{k}={tmp_path}" for k in sorted(missing)])
    validate(cfg)


def test_a_missing_mandatory_value_names_the_key(tmp_path):
    out = _cli(["+recipe=demo", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "grpo-train: config error: data.path is required (it has no default): add data.path=... to the command"
    assert not (tmp_path / "run").exists()


def test_recipe_overrides_apply_and_cli_overrides_win():
    cfg = _compose(["+recipe=gsm8k", "algo.group_size=4", "algo.beta=0"])
    assert cfg.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (cfg.algo.group_size, cfg.algo.beta) == (4, 0)


@pytest.mark.parametrize("option", _options("optim"))
def test_every_optimizer_option_instantiates(option):
    import torch
    from hydra.utils import instantiate

    cfg = _compose([f"optim={option}"])
    opt = instantiate(cfg.optim.optimizer, params=[torch.nn.Parameter(torch.zeros(2))], lr=cfg.optim.lr)
    assert type(opt).__name__ == cfg.optim.optimizer._target_.rsplit(".", 1)[1]


@pytest.mark.parametrize("option", _options("algo"))
def test_every_aggregation_option_instantiates(option):
    import torch
    from hydra.utils import instantiate

    agg = instantiate(_compose([f"algo={option}"]).algo.aggregation)
    assert agg.weights(torch.ones(2, 3)).shape == (2, 3)


def test_every_group_has_a_real_option():
    for group in GROUPS:
        assert _options(group), f"conf/{group}/ has no option"


def test_validate_names_the_key():
    cfg = _compose(["algo.beta=-1"])
    with pytest.raises(ConfigError, match=r"^algo\.beta=-1\.0 is invalid: must be >= 0$"):
        validate(cfg)


def _cli(args, cwd, env=None):
    return subprocess.run(GRPO_TRAIN + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def test_help_lists_groups_from_any_directory(tmp_path):
    out = _cli(["--help"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for group in GROUPS + ["recipe"]:
        assert f"\n{group}: " in out.stdout


def test_cfg_job_prints_the_composed_recipe_from_any_directory(tmp_path):
    out = _cli(["+recipe=gsm8k", "--cfg", "job"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.data.path == "openai/gsm8k" and cfg.algo.group_size == 8
    assert not (tmp_path / "outputs").exists()


# One bad input per row: (override, text the single error line must contain).
BAD_INPUTS = [
    ("algo.grop_size=4", "algo.grop_size is not a config key: did you mean algo.group_size?"),
    ("algo.group_size=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("algo.group_size=1", "algo.group_size=1 is invalid: must be >= 2"),
    ("algo.beta=-0.1", "algo.beta=-0.1 is invalid: must be >= 0"),
    ("algo.epsilon=1.5", "algo.epsilon=1.5 is invalid: must be in (0, 1)"),
    ("algo.epsilon_high=0.1", "algo.epsilon_high=0.1 is invalid: must be >= algo.epsilon (0.2)"),
    ("optim.lr=0", "optim.lr=0.0 is invalid: must be > 0"),
    ("sampler.max_tokens=0", "sampler.max_tokens=0 is invalid: must be > 0"),
    ("sampler.temperature=0", "sampler.temperature=0.0 is invalid: must be > 0"),
    ("model.dtype=fp8", "model.dtype='fp8' is invalid: must be one of float32, bfloat16, float16"),
    ("logger.wandb_mode=loud", "logger.wandb_mode='loud' is invalid"),
    ("+recipe=nope", "recipe=nope: no such option; recipe options: "),
    ("model=nope", "model=nope: no such option; model options: "),
    ("model.path=/no/such/model", "model.path='/no/such/model' is invalid: no such file or directory"),
    ("data.path=./missing.jsonl", "data.path='./missing.jsonl' is invalid: no such file or directory"),
    ("algo.max_staleness=1", "algo.max_staleness=1 is invalid: needs sampler.kind=server"),
    ("sampler.kind=remote", "sampler.kind='remote' is invalid: must be colocated or server"),
    ("sampler.url=localhost:8000", "sampler.url='localhost:8000' is invalid: must start with http://"),
]


@pytest.mark.parametrize("override,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_clear_line_nonzero_and_writes_nothing(override, message, tmp_path):
    run_dir = tmp_path / "run"
    keep = tmp_path / "earlier.txt"
    keep.write_text("written before")
    out = _cli([override, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not run_dir.exists()
    assert keep.read_text() == "written before"


def test_user_recipe_dir_via_config_dir(tmp_path):
    mine = tmp_path / "mine" / "recipe"
    mine.mkdir(parents=True)
    (mine / "small.yaml").write_text("# @package _global_\nalgo:\n  group_size: 3\n")
    out = _cli(["--config-dir", str(tmp_path / "mine"), "+recipe=small", "--cfg", "job"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert OmegaConf.create(out.stdout).algo.group_size == 3


def test_wheel_install_composes_from_any_directory(tmp_path):
    """Build the real wheel, install it into a target dir, and compose a recipe from /tmp."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("grpo_cli-*.whl")
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert inst.returncode == 0, inst.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    where = subprocess.run(
        [sys.executable, "-c", "import grpo_cli.config.paths as p; print(p.config_dir())"],
        cwd=tmp_path, capture_output=True, text=True, env=env,
    )
    assert Path(where.stdout.strip()) == target / "grpo_cli" / "conf"  # the wheel's copy, not the checkout
    out = _cli(["+recipe=gsm8k", "--cfg", "job"], cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert OmegaConf.create(out.stdout).model.path == "Qwen/Qwen2.5-0.5B-Instruct"
