"""Every variant recipe (recipes/*_gsm8k.yaml) runs 2 steps on the tiny model through the real
vLLM engine, with the same tiny overrides as the GSM8K recipe's test, and does what it names."""

from __future__ import annotations

import json

import pytest

from examples.demo.arithmetic import write_jsonl
from grpo_cli.train import run
from tests.conftest import REPO, compose
from tests.test_gsm8k_recipe import recipe_overrides, word_problems

pytestmark = pytest.mark.engine

RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*_gsm8k.yaml"))
# Only what a 16-token completion needs; the rest is each recipe as users run it.
TINY = {"dapo_gsm8k": ["reward.funcs.overlong.fn.cache_tokens=4"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gsm8k")
    return write_jsonl(word_problems(40, 0), d / "train.jsonl"), write_jsonl(word_problems(8, 1), d / "test.jsonl")


@pytest.mark.parametrize("recipe", RECIPES)
def test_variant_recipe_runs_two_steps(recipe, tiny_model, files, tmp_path):
    overrides = [o.replace("+recipe=gsm8k", f"+recipe={recipe}") for o in recipe_overrides(tiny_model, files)]
    cfg = compose(overrides + TINY.get(recipe, []) + ["eval.pass_k=0", "checkpoint.every=0"])
    run(cfg, run_dir=tmp_path)
    steps = [m for m in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["beta"] == cfg.algo.beta and ("kl/mean" in m) == (cfg.algo.beta > 0)
        assert m["filter/groups_drawn"] % cfg.train.prompts_per_step == 0
    if recipe == "dapo_gsm8k":  # dynamic sampling: only informative groups are trained on
        assert cfg.algo.aggregation._target_.endswith("TokenMean") and cfg.algo.epsilon_high == 0.28
        assert "reward/overlong/mean" in steps[0]
        for m in steps:
            assert m["filter/groups_trained"] <= cfg.train.prompts_per_step
            drawn = m["filter/groups_drawn"] // cfg.train.prompts_per_step
            assert 1 <= drawn <= 1 + cfg.algo.batch_filter.max_extra_draws
    if recipe == "dr_grpo_gsm8k":
        assert cfg.algo.aggregation._target_.endswith("ConstantNormalizer") and cfg.algo.scale_rewards == "none"
    if recipe == "gspo_gsm8k":
        assert cfg.algo.objective._target_.endswith("GSPO")
    if recipe in ("cispo_gsm8k", "sapo_gsm8k", "vespo_gsm8k"):  # the objective the recipe names
        assert cfg.algo.objective._target_.endswith("." + recipe.split("_")[0].upper())
    if recipe == "luspo_gsm8k":
        assert cfg.algo.objective._target_.endswith("GSPO") and cfg.algo.aggregation._target_.endswith("SequenceSum")
    assert (tmp_path / "checkpoints" / "final" / "config.json").exists()
