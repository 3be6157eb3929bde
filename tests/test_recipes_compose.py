"""A group swapped on top of a recipe gives that option's values whole (issue 25, item 1).

`grpo-train +recipe=gsm8k algo=gspo` must run GSPO as conf/algo/gspo.yaml defines it (epsilon 3e-4,
epsilon_high 4e-4, beta 0), not GSPO mixed with the recipe's GRPO values: a recipe selects groups in
its defaults list and sets no key that a variant group (algo, filter) sets.
"""

from __future__ import annotations

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from grpo_cli.config.paths import config_dir
from grpo_cli.config.validate import register_configs
from tests.conftest import REPO

register_configs()
CONF = config_dir()
RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
# A variant group: its options are alternatives whose values define them. Its package in the config.
VARIANT_GROUPS = {"algo": "algo", "filter": "algo.batch_filter"}


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _option_values(group: str, option: str) -> dict:
    """What conf/GROUP/OPTION.yaml sets (following its own defaults list), as written (unresolved)."""
    raw = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    values = {}
    for entry in raw.pop("defaults", []):
        if entry != "_self_":
            values = OmegaConf.merge(values, _option_values(group, entry))
    return OmegaConf.to_container(OmegaConf.merge(values, raw))


def _leaves(node: dict, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _assert_option_values(cfg, group: str, option: str, what: str):
    package = VARIANT_GROUPS[group]
    node = OmegaConf.to_container(OmegaConf.select(cfg, package), resolve=False)
    for key, want in _leaves(_option_values(group, option)):
        got = node
        for part in key.split("."):
            got = got.get(part) if isinstance(got, dict) else None
        assert got == want, f"{what}: {package}.{key} is {got!r}, conf/{group}/{option}.yaml says {want!r}"


MATRIX = [(r, g, o) for r in RECIPES for g in VARIANT_GROUPS for o in sorted(p.stem for p in (CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize("recipe,group,option", MATRIX, ids=[f"{r}-{g}={o}" for r, g, o in MATRIX])
def test_a_group_on_a_recipe_gives_the_options_values(recipe, group, option):
    cfg = _compose([f"+recipe={recipe}", f"{group}={option}"])
    _assert_option_values(cfg, group, option, f"+recipe={recipe} {group}={option}")


def test_the_command_line_still_wins_over_the_swapped_group():
    cfg = _compose(["+recipe=gsm8k", "algo=gspo", "algo.beta=0.01", "algo.group_size=4"])
    assert (cfg.algo.beta, cfg.algo.group_size, cfg.algo.epsilon) == (0.01, 4, 3e-4)


def test_the_issues_example():
    algo = _compose(["+recipe=gsm8k", "algo=gspo"]).algo
    assert (algo.epsilon, algo.epsilon_high, algo.beta) == (3e-4, 4e-4, 0.0)
    assert algo.objective._target_ == "grpo_cli.algo.objectives.GSPO"
    assert algo.is_correction._target_ == "grpo_cli.algo.correction.MaskedIS"  # the recipe's own, no algo option sets it


# Each recipe alone: the values its header promises (the full `--cfg job` of each was diffed before and
# after the change and is identical).
RECIPE_VALUES = {
    "demo": {"algo.group_size": 8, "algo.beta": 0.04, "algo.epsilon": 0.2, "optim.lr": 1.5e-4, "train.max_steps": 280},
    "tools_demo": {"algo.group_size": 8, "algo.beta": 0.04, "optim.lr": 1.5e-4, "train.max_steps": 40,
                   "tools.funcs": ["examples.demo.tool_task.multiply"], "tools.max_turns": 1,
                   "data.use_chat_template": True},
    "gsm8k": {"algo.group_size": 8, "algo.beta": 0.04, "algo.epsilon": 0.2, "algo.num_iterations": 1,
              "algo.is_correction._target_": "grpo_cli.algo.correction.MaskedIS"},
    "math": {"algo.group_size": 8, "algo.beta": 0.04, "algo.epsilon": 0.2,
             "algo.is_correction._target_": "grpo_cli.algo.correction.MaskedIS"},
    "dapo_gsm8k": {"algo.group_size": 16, "algo.beta": 0.0, "algo.epsilon": 0.2, "algo.epsilon_high": 0.28,
                   "algo.aggregation._target_": "grpo_cli.algo.aggregation.TokenMean",
                   "algo.batch_filter._target_": "grpo_cli.rollout.filters.DynamicSampling",
                   "algo.batch_filter.max_extra_draws": 3, "train.prompts_per_step": 32},
    "dr_grpo_gsm8k": {"algo.group_size": 8, "algo.beta": 0.0, "algo.scale_rewards": "none",
                      "algo.aggregation._target_": "grpo_cli.algo.aggregation.ConstantNormalizer"},
    "gspo_gsm8k": {"algo.group_size": 8, "algo.beta": 0.0, "algo.epsilon": 3e-4, "algo.epsilon_high": 4e-4,
                   "algo.objective._target_": "grpo_cli.algo.objectives.GSPO", "train.optim_batch_size": 64},
    "cispo_gsm8k": {"algo.group_size": 8, "algo.beta": 0.0, "algo.objective._target_": "grpo_cli.algo.objectives.CISPO",
                    "algo.objective.clip_max": 5.0, "train.optim_batch_size": 64},
    "sapo_gsm8k": {"algo.group_size": 8, "algo.beta": 0.0, "algo.objective._target_": "grpo_cli.algo.objectives.SAPO",
                   "algo.objective.temperature_neg": 1.05, "train.optim_batch_size": 64},
    "luspo_gsm8k": {"algo.group_size": 8, "algo.beta": 0.0, "algo.epsilon": 3e-4, "algo.epsilon_high": 4e-4,
                    "algo.aggregation._target_": "grpo_cli.algo.aggregation.SequenceSum", "train.optim_batch_size": 64},
    "vespo_gsm8k": {"algo.group_size": 8, "algo.beta": 0.0, "algo.objective._target_": "grpo_cli.algo.objectives.VESPO",
                    "algo.objective.k_pos": 2.0, "train.optim_batch_size": 64},
}


def test_every_recipe_is_listed_here():
    assert sorted(RECIPE_VALUES) == RECIPES


@pytest.mark.parametrize("recipe", sorted(RECIPE_VALUES))
def test_each_recipe_alone_keeps_its_values(recipe):
    cfg = _compose([f"+recipe={recipe}"])
    got = {key: OmegaConf.select(cfg, key) for key in RECIPE_VALUES[recipe]}
    assert got == RECIPE_VALUES[recipe]


def test_a_sweep_over_algo_gives_each_job_its_variant():
    """`grpo-train -m +recipe=gsm8k algo=grpo,dapo,gspo`: each job composes as Hydra's sweeper splits it."""
    parsed = OverridesParser.create().parse_overrides(["+recipe=gsm8k", "algo=grpo,dapo,gspo,dr_grpo"])
    jobs = BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]
    assert len(jobs) == 4
    for job in jobs:
        option = job[-1].split("=", 1)[1]
        _assert_option_values(_compose(list(job)), "algo", option, " ".join(job))
