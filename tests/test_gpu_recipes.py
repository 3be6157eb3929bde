"""Every shipped recipe that samples in another precision than the learner corrects for the mismatch
(issue 19): a bf16 sampler under an fp32 learner gets an importance-sampling correction; the fp32/fp32
CPU demo stays exact (no correction)."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, compose

RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_mixed_precision_recipe_corrects_the_sampler_learner_mismatch(recipe):
    cfg = compose([f"+recipe={recipe}"])
    mixed = cfg.sampler.dtype != cfg.model.dtype
    corrected = cfg.algo.is_correction._target_ != "grpo_cli.algo.correction.NoCorrection"
    assert corrected == mixed, f"{recipe}: sampler {cfg.sampler.dtype}, learner {cfg.model.dtype}"
