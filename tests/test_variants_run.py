"""Loss-side variants inside the learner on a tiny model, and `algo=gspo` through the real engine."""

from __future__ import annotations

import json
import string

import pytest
import torch

from grpo_cli.learner.learner import Learner, RolloutBatch
from grpo_cli.train import run
from tests.conftest import compose, make_learner

PAD = 0
PROMPTS, COMPLETIONS = [[5, 6, 7], [8], [9, 10]], [[30, 31], [40, 41, 42], [50]]


def _batch(finish_reasons=None, advantages=(1.0, -0.5, -0.5)):
    return RolloutBatch.build(PROMPTS, COMPLETIONS, [[0.0] * len(c) for c in COMPLETIONS],
                              torch.tensor(advantages), PAD, finish_reasons)


def test_learner_entropy_is_the_entropy_of_the_sampling_distribution(tiny_overrides):
    learner = make_learner(compose(tiny_overrides + ["sampler.temperature=0.7", "algo.beta=0"]), total_optim_steps=1)
    batch = _batch()
    logp, entropy = learner.completion_logprobs(learner.policy, batch, entropy=True)  # [3, 3] each
    assert not entropy.requires_grad  # no bonus: logged only
    with torch.no_grad():
        for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
            logits = learner.policy(torch.tensor([p + c])).logits[0, len(p) - 1 : -1] / 0.7  # [len(c), V]
            log_p = logits.log_softmax(-1)  # [len(c), V]
            assert torch.allclose(entropy[i, : len(c)], -(log_p.exp() * log_p).sum(-1), atol=1e-5), i
            assert torch.allclose(logp[i, : len(c)], logits.log_softmax(-1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1), atol=1e-5)
    bonus = make_learner(compose(tiny_overrides + ["algo.beta=0", "algo.entropy_coef=0.01"]), total_optim_steps=1)
    assert bonus.completion_logprobs(bonus.policy, batch, entropy=True)[1].requires_grad


def test_entropy_bonus_changes_the_update_and_entropy_is_logged(tiny_overrides):
    updates, metrics = [], []
    for coef in (0.0, 0.5):
        cfg = compose(tiny_overrides + ["algo.beta=0", "optim=sgd", "optim.lr=1.0", f"algo.entropy_coef={coef}"])
        learner = make_learner(cfg, total_optim_steps=1)
        before = torch.cat([p.detach().flatten() for p in learner.policy.parameters()])
        metrics.append(learner.train_step(_batch(advantages=(0.0, 0.0, 0.0))))
        updates.append(torch.cat([p.detach().flatten() for p in learner.policy.parameters()]) - before)
    # Zero advantages: without a bonus nothing moves; with it, the policy moves.
    assert updates[0].abs().max() == 0 and updates[1].abs().max() > 0
    assert metrics[0]["entropy/mean"] > 0 and metrics[0]["entropy/mean"] == pytest.approx(metrics[1]["entropy/mean"])


@pytest.mark.parametrize("mask_truncated", [True, False])
def test_truncated_completions_contribute_no_gradient_when_masked(tiny_overrides, mask_truncated):
    cfg = compose(tiny_overrides + ["algo.beta=0", "optim=sgd", "optim.lr=1.0", f"algo.mask_truncated={mask_truncated}"])
    learner = make_learner(cfg, total_optim_steps=1)
    metrics = learner.train_step(_batch(finish_reasons=["length"] * 3))
    if mask_truncated:
        assert metrics["grad_norm"] == 0.0 and metrics["loss"] == 0.0
    else:
        assert metrics["grad_norm"] > 0.0


def digits(prompts, completions, **_):
    """A reward that varies within a group even for an untrained model."""
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


@pytest.mark.engine
def test_gspo_runs_two_steps_through_the_engine(tiny_overrides, tmp_path):
    cfg = compose(tiny_overrides + [
        "algo=gspo", "algo.group_size=4", "algo.is_correction._target_=grpo_cli.algo.correction.MaskedIS",
        "+reward.funcs.digits.fn=tests.test_variants_run.digits",
    ])
    assert cfg.algo.objective._target_ == "grpo_cli.algo.objectives.GSPO"
    run(cfg, run_dir=tmp_path)
    steps = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["entropy/mean"] > 0 and 0 <= m["clip_frac"] <= 1 and m["is/masked_frac"] == 0.0
        assert m["grad_norm"] > 0 and "kl/mean" not in m  # GSPO: beta 0, no reference


@pytest.mark.engine
def test_finish_reasons_reach_the_learner(tiny_overrides, tmp_path, monkeypatch):
    seen = []
    train_step = Learner.train_step

    def spy(self, batch):
        seen.append(batch.truncated.clone())
        return train_step(self, batch)

    monkeypatch.setattr(Learner, "train_step", spy)
    # One-token completions: each one is truncated unless that token is EOS or a letter (stop strings:
    # ~40 % of the tiny vocabulary), so a step has both kinds whatever the seed draws.
    letters = "[" + ",".join(string.ascii_letters) + "]"
    cfg = compose(tiny_overrides + ["sampler.max_tokens=1", "algo.mask_truncated=true", "train.max_steps=1",
                                    "algo.beta=0", "checkpoint.final=false", f"sampler.stop={letters}"])
    run(cfg, run_dir=tmp_path)
    (m,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "reward/mean" in x]
    assert 0 < m["truncated_frac"] < 1, m  # both kinds, so the check below can fail
    (truncated,) = seen
    assert truncated.float().mean().item() == pytest.approx(m["truncated_frac"])


@pytest.mark.engine
def test_every_other_loss_part_runs_through_the_engine_together(tiny_overrides, tmp_path):
    """Dual-clip + response-level k1 KL (so a reference) + token TIS + entropy bonus + truncation mask."""
    cfg = compose(tiny_overrides + [
        "algo.objective._target_=grpo_cli.algo.objectives.DualClip", "algo.kl._target_=grpo_cli.algo.kl.ResponseKL",
        "algo.kl.estimator=k1", "algo.beta=0.04", "algo.is_correction._target_=grpo_cli.algo.correction.TruncatedIS",
        "algo.entropy_coef=0.01", "algo.mask_truncated=true", "sampler.max_tokens=4",
        "+reward.funcs.digits.fn=tests.test_variants_run.digits", "checkpoint.final=false",
    ])
    run(cfg, run_dir=tmp_path)
    steps = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        for key in ("kl/mean", "is/capped_frac", "is/ratio/mean", "clip_frac/dual", "entropy/mean"):
            assert key in m and m[key] == m[key], key  # present and not NaN
        assert m["is/capped_frac"] == 0.0  # fp32 sampler and learner agree far inside C = 3
