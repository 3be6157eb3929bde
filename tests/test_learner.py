"""The learner's batch layout and log-probs on a tiny model (no engine)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo_cli.learner.learner import RolloutBatch
from tests.conftest import compose, make_learner

PAD = 0


def test_rollout_batch_layout_left_pads_prompts_right_pads_completions():
    b = RolloutBatch.build([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], [[-0.1, -0.2], [-0.3, -0.4, -0.5]],
                           torch.tensor([1.0, -1.0]), PAD)
    assert b.input_ids.tolist() == [[5, 6, 7, 1, 2, 0], [0, 0, 8, 3, 4, 9]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert b.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert torch.allclose(b.sampler_logp, torch.tensor([[-0.1, -0.2, 0.0], [-0.3, -0.4, -0.5]]))


def test_select_cuts_columns_that_are_padding_in_every_selected_row():
    b = RolloutBatch.build([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], [[0, 0], [0, 0, 0]], torch.zeros(2), PAD)
    one = b.select(torch.tensor([1]))
    assert one.input_ids.tolist() == [[8, 3, 4, 9]] and one.completion_mask.tolist() == [[1, 1, 1]]
    first = b.select(torch.tensor([0]))
    assert first.input_ids.tolist() == [[5, 6, 7, 1, 2]] and first.completion_mask.tolist() == [[1, 1]]


@pytest.fixture(scope="module")
def learner(tiny_overrides):
    return make_learner(compose(tiny_overrides + ["sampler.temperature=0.7"]), total_optim_steps=1)


def test_padded_batch_logprobs_equal_one_sequence_at_a_time(learner):
    """Left padding and batching must not change any completion token's log-prob."""
    prompts, completions = [[5, 6, 7, 8, 9], [10], [11, 12]], [[20, 21, 22], [23], [24, 25, 26, 27]]
    batch = RolloutBatch.build(prompts, completions, [[0.0] * len(c) for c in completions], torch.zeros(3), PAD)
    with torch.no_grad():
        together = learner.completion_logprobs(learner.policy, batch)  # [3, 4]
        model = learner.policy
        for i, (p, c) in enumerate(zip(prompts, completions)):
            logits = model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1] / 0.7  # [len(c), V]
            alone = logits.log_softmax(-1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
            assert torch.allclose(together[i, : len(c)], alone, atol=1e-5), i


def test_train_step_moves_logprobs_the_way_advantages_point(tiny_overrides):
    cfg = compose(tiny_overrides + ["algo.beta=0", "optim.lr=1e-2", "train.micro_batch_size=1"])
    learner = make_learner(cfg, total_optim_steps=1)
    batch = RolloutBatch.build([[5, 6], [5, 6]], [[30, 31], [40, 41]], [[0.0, 0.0], [0.0, 0.0]],
                               torch.tensor([1.0, -1.0]), PAD)
    with torch.no_grad():
        before = learner.completion_logprobs(learner.policy, batch).sum(-1)
    metrics = learner.train_step(batch)
    with torch.no_grad():
        after = learner.completion_logprobs(learner.policy, batch).sum(-1)
    assert after[0] > before[0] and after[1] < before[1]
    assert metrics["grad_norm"] > 0 and metrics["clip_frac"] == 0.0


def test_micro_batch_size_does_not_change_the_update(tiny_overrides):
    """Gradient accumulation over micro-batches gives the same update as one big batch.

    SGD, so the update is linear in the gradient (Adam's first step, ~lr * sign(g), would turn
    float noise in near-zero gradients into lr-sized differences)."""
    batch = RolloutBatch.build([[5, 6, 7], [8], [9, 10]], [[30, 31], [40, 41, 42], [50]],
                               [[0.0] * 2, [0.0] * 3, [0.0]], torch.tensor([1.0, -0.5, -0.5]), PAD)
    weights = []
    for mb in (1, 3):
        cfg = compose(tiny_overrides + ["algo.beta=0.04", "optim=sgd", "optim.lr=1.0", f"train.micro_batch_size={mb}"])
        learner = make_learner(cfg, total_optim_steps=1)
        learner.train_step(batch)
        weights.append(torch.cat([p.detach().flatten() for p in learner.policy.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_reference_is_frozen_and_only_loaded_with_beta(tiny_overrides):
    with_ref = make_learner(compose(tiny_overrides + ["algo.beta=0.04"]), total_optim_steps=1)
    assert with_ref.ref is not None and not any(p.requires_grad for p in with_ref.ref.parameters())
    assert not with_ref.ref.training
    assert make_learner(compose(tiny_overrides + ["algo.beta=0"]), total_optim_steps=1).ref is None
    assert isinstance(with_ref.policy, AutoModelForCausalLM._model_mapping[type(with_ref.policy.config)])


@pytest.mark.parametrize("mu,opt_bs,expected_steps", [(1, None, 1), (2, None, 2), (1, 2, 2), (2, 2, 4)])
def test_optimizer_steps_and_pi_old_with_mu_and_optimizer_batches(tiny_overrides, mu, opt_bs, expected_steps):
    overrides = ["algo.beta=0", "optim.lr=5e-2", f"algo.num_iterations={mu}", "train.micro_batch_size=1"]
    if opt_bs:
        overrides.append(f"train.optim_batch_size={opt_bs}")
    learner = make_learner(compose(tiny_overrides + overrides), total_optim_steps=expected_steps)
    batch = RolloutBatch.build([[5, 6]] * 4, [[30, 31], [40, 41], [50], [60, 61, 62]], [[0.0] * 2, [0.0] * 2, [0.0], [0.0] * 3],
                               torch.tensor([1.0, -1.0, 0.5, -0.5]), PAD)
    metrics = learner.train_step(batch)
    param = next(learner.policy.parameters())
    assert int(learner.optimizer.state[param]["step"]) == expected_steps
    if expected_steps == 1:  # one step on the sampling policy: ratio is exactly 1
        assert metrics["ratio/max"] == 1.0
    else:  # later steps see a moved policy against the no-grad pi_old: ratios leave 1
        assert metrics["ratio/max"] > 1.0


def _mixed_lengths_batch() -> RolloutBatch:
    g = torch.Generator().manual_seed(0)
    p_lens, c_lens = [3, 5, 1, 4, 2, 5], [2, 9, 1, 6, 3, 1]
    prompts = [torch.randint(3, 60, (n,), generator=g).tolist() for n in p_lens]
    completions = [torch.randint(3, 60, (n,), generator=g).tolist() for n in c_lens]
    return RolloutBatch.build(prompts, completions, [[0.0] * len(c) for c in completions],
                              torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0]), PAD)


@pytest.mark.parametrize("extra", [[], ["train.compile=true"]], ids=["eager", "compiled"])
def test_packed_sequences_give_the_padded_logprobs_and_update(tiny_overrides, extra):
    """Packing (and torch.compile on top of it) changes how the forward is laid out, not what it
    computes: same log-probs, same gradient step, and far fewer padding slots."""
    batch = _mixed_lengths_batch()
    logps, weights, pad = [], [], []
    for pack in ("false", "true"):
        cfg = compose(tiny_overrides + ["algo.beta=0.04", "optim=sgd", "optim.lr=1.0", "train.micro_batch_size=6",
                                        f"train.pack_sequences={pack}"] + (extra if pack == "true" else []))
        learner = make_learner(cfg, total_optim_steps=1)
        with torch.no_grad():
            logps.append(learner.completion_logprobs(learner.policy, batch) * batch.completion_mask)
        pad.append(learner.train_step(batch)["learner/pad_frac"])
        weights.append(torch.cat([p.detach().flatten() for p in learner.policy.parameters()]))
    torch.testing.assert_close(logps[1], logps[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights[1], weights[0], atol=1e-5, rtol=1e-5)
    # Padded: 6 rows x (5 + 9) slots for 42 tokens; packed: 36 tokens (no last completion token) in
    # first-fit-decreasing rows of 13: [13] [9, 4] [5, 4, 1].
    assert pad[0] == pytest.approx(1 - 42 / 84)
    assert pad[1] == pytest.approx(1 - 36 / 39)


@pytest.mark.parametrize("extra", [[], ["train.compile=true"]], ids=["eager", "compiled"])
def test_shared_prompts_give_the_padded_logprobs_and_update(tiny_overrides, extra):
    """Two prompts x G=3 completions: with train.share_prompts each prompt is fed once per
    micro-batch and its completions attend to that copy. Same log-probs and SGD step as the padded
    layout, and the prompts' slots counted once."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 60, (n,), generator=g).tolist() for n in (4, 6)]
    c_lens = [2, 9, 1, 6, 3, 5]
    completions = [torch.randint(3, 60, (n,), generator=g).tolist() for n in c_lens]
    batch = RolloutBatch.build([prompts[i // 3] for i in range(6)], completions, [[0.0] * n for n in c_lens],
                               torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0]), PAD)
    assert batch.prompt_groups.tolist() == [0, 0, 0, 1, 1, 1]
    logps, weights, fed = [], [], []
    for layout in (["train.pack_sequences=false"], ["train.share_prompts=false"], ["train.share_prompts=true", *extra]):
        cfg = compose(tiny_overrides + ["algo.beta=0.04", "optim=sgd", "optim.lr=1.0", "train.micro_batch_size=6", *layout])
        learner = make_learner(cfg, total_optim_steps=1)
        with torch.no_grad():
            logps.append(learner.completion_logprobs(learner.policy, batch) * batch.completion_mask)
        learner.train_step(batch)
        fed.append(int(learner.tokens[0]))
        weights.append(torch.cat([p.detach().flatten() for p in learner.policy.parameters()]))
    for i in (1, 2):
        torch.testing.assert_close(logps[i], logps[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(weights[i], weights[0], atol=1e-5, rtol=1e-5)
    # Real tokens fed: padded 3 x 4 + 3 x 6 prompt + 26 completion; packed: the last completion
    # token of each row is not fed (26 - 6); shared: each prompt once (4 + 6).
    assert fed == [30 + 26, 30 + 20, 10 + 20]
