"""Loss-side GRPO variants on hand-built tensors: each test checks the variant's defining behaviour.

Objectives (clipped surrogate, dual-clip, GSPO), KL forms (k1/k2/k3 per token, response-level),
importance-sampling corrections (truncated, masked; token, sequence), the entropy term and the
truncation mask. No model, no engine.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from grpo_cli.algo.aggregation import SequenceMean, TokenMean
from grpo_cli.algo.correction import MaskedIS, NoCorrection, TruncatedIS
from grpo_cli.algo.kl import ResponseKL, TokenKL, kl_k1, kl_k2, kl_k3
from grpo_cli.algo.loss import GRPOLoss, LossInputs, LossStats
from grpo_cli.algo.objectives import GSPO, ClippedSurrogate, DualClip
from grpo_cli.config.validate import ConfigError, validate
from grpo_cli.learner.learner import RolloutBatch
from grpo_cli.learner.logprobs import token_logprobs
from tests.conftest import compose

f64 = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=f64)


def close(a: torch.Tensor, rows) -> bool:
    return torch.allclose(a.detach(), t(rows), atol=1e-12)


def inputs(logp, old=None, adv=None, mask=None, sampler=None, ref=None, entropy=None) -> LossInputs:
    """LossInputs with defaults: pi_old = pi (ratio 1), sampler = pi_old, all tokens in the loss."""
    old = logp.detach().clone() if old is None else old
    mask = torch.ones_like(logp.detach()) if mask is None else mask
    adv = torch.ones(logp.shape[0], dtype=f64) if adv is None else adv
    return LossInputs(logp, old, old if sampler is None else sampler, ref, adv, mask, entropy)


def loss_of(parts: dict, x: LossInputs, weights=None, beta=0.0, entropy_coef=0.0):
    loss_fn = GRPOLoss(parts.get("objective", ClippedSurrogate(0.2)), parts.get("kl", TokenKL()),
                       parts.get("is", NoCorrection()), beta, entropy_coef)
    return loss_fn(x, x.mask if weights is None else weights)


def grad(loss, logp):
    (g,) = torch.autograd.grad(loss, logp)
    return g


# --- GSPO: one ratio per sequence, clipped per sequence -----------------------------------------


def test_gspo_ratio_is_the_geometric_mean_of_the_token_ratios():
    logp = t([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]])
    old = t([[-1.2, -1.5, -0.5], [-0.1, -0.9, 0.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])  # the second completion has 2 tokens
    s = torch.exp(GSPO(3e-4, 4e-4).log_ratio(inputs(logp, old, mask=mask)))  # [2, 1]
    token_ratios = [[math.exp(0.2), math.exp(-0.5), 1.0], [math.exp(-0.2), math.exp(0.2)]]
    expected = [math.prod(r) ** (1 / len(r)) for r in token_ratios]
    assert s.squeeze(-1).tolist() == pytest.approx(expected)


def test_gspo_clips_whole_sequences_where_token_clipping_would_not():
    # Sequence 0: token log-ratios +0.5, -0.5 (both outside a 0.2 band), geometric mean ratio 1.
    # Sequence 1: token log-ratios +0.01 each (inside a 0.2 band), ratio e^0.01 > 1 + 4e-4.
    old = torch.zeros(2, 2, dtype=f64)
    logp = t([[0.5, -0.5], [0.01, 0.01]]).requires_grad_()
    adv = t([1.0, 1.0])
    w = SequenceMean().weights(torch.ones(2, 2, dtype=f64))
    loss, stats = loss_of({"objective": GSPO(3e-4, 4e-4)}, inputs(logp, old, adv), w)
    g = grad(loss, logp)
    # Sequence 0 is unclipped: loss -s * A with s = 1, d/dlogp_t = -A * s / |y| per token, times 1/N.
    assert g[0].tolist() == pytest.approx([-0.5 / 2, -0.5 / 2])
    # Sequence 1 is clipped as a whole: no gradient on any of its tokens.
    assert g[1].tolist() == [0.0, 0.0]
    assert stats.sums["clip_frac"].item() == 2  # its two tokens
    # The per-token surrogate does the opposite: clips token 0 of sequence 0 only, not sequence 1.
    loss_tok, _ = loss_of({"objective": ClippedSurrogate(0.2)}, inputs(logp, old, adv), w)
    g_tok = grad(loss_tok, logp)
    assert g_tok[0, 0].item() == 0.0 and g_tok[0, 1].item() != 0.0 and torch.all(g_tok[1] != 0)


def test_gspo_loss_equals_the_sequence_objective():
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(4, 5, generator=g, dtype=f64)).requires_grad_()
    old = logp.detach() + 0.001 * torch.randn(4, 5, generator=g, dtype=f64)
    adv = torch.randn(4, generator=g, dtype=f64)
    mask = t([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    loss, _ = loss_of({"objective": GSPO(3e-4, 4e-4)}, inputs(logp, old, adv, mask), SequenceMean().weights(mask))
    expected = 0.0
    for i in range(4):
        n = int(mask[i].sum())
        s = torch.exp((logp[i, :n] - old[i, :n]).mean())
        expected = expected - torch.min(s * adv[i], s.clamp(1 - 3e-4, 1 + 4e-4) * adv[i]) / 4
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)


# --- dual-clip ---------------------------------------------------------------------------------


def test_dual_clip_bounds_the_loss_at_minus_c_times_a_for_negative_advantages():
    ratios = t([[0.5, 1.0, 2.0, 2.9, 3.5, 10.0]])
    logp = torch.log(ratios).requires_grad_()
    old = torch.zeros_like(ratios)
    neg = inputs(logp, old, adv=t([-2.0]))
    per_token, stats = DualClip(0.2, clip_c=3.0)(neg)
    plain, _ = ClippedSurrogate(0.2)(neg)
    # -A * r for r in (1.2, 3): unchanged; above c the loss stays at -c * A = 6 instead of growing.
    assert per_token[0].tolist() == pytest.approx([1.6, 2.0, 4.0, 5.8, 6.0, 6.0])
    assert plain[0, 4:].tolist() == pytest.approx([7.0, 20.0])
    assert torch.all(per_token <= 3.0 * 2.0 + 1e-12)
    g = grad(per_token.sum(), logp)
    assert g[0, 4:].tolist() == [0.0, 0.0]  # bounded tokens push no further
    assert stats.sums["clip_frac/dual"].item() == 2
    # Positive advantages: exactly the clipped surrogate.
    pos = inputs(logp, old, adv=t([2.0]))
    assert torch.equal(DualClip(0.2, clip_c=3.0)(pos)[0], ClippedSurrogate(0.2)(pos)[0])


def test_dual_clip_rejects_c_at_most_one():
    with pytest.raises(ValueError, match="clip_c"):
        DualClip(0.2, clip_c=1.0)


# --- KL: estimators and response-level -----------------------------------------------------------


def test_kl_estimators_match_their_formulas():
    logp, ref = t([-1.0, -0.2, -3.0]), t([-1.5, -0.2, -1.0])
    d = [0.5, 0.0, -2.0]  # log pi - log ref
    assert kl_k1(logp, ref).tolist() == pytest.approx(d)
    assert kl_k2(logp, ref).tolist() == pytest.approx([x * x / 2 for x in d])
    assert kl_k3(logp, ref).tolist() == pytest.approx([math.exp(-x) + x - 1 for x in d])


def test_k1_and_k3_are_unbiased_and_k2_is_not():
    # Expectations under pi, summed exactly over a 4-token vocabulary.
    p = torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=f64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=f64)
    kl = (p * (p / q).log()).sum().item()
    mean = {name: (p * f(p.log(), q.log())).sum().item() for name, f in (("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3))}
    assert mean["k1"] == pytest.approx(kl) and mean["k3"] == pytest.approx(kl)
    assert mean["k2"] != pytest.approx(kl)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_the_chosen_estimator_enters_the_loss_as_beta_times_its_value(estimator):
    logp = t([[-1.0, -2.0], [-0.5, -0.1]]).requires_grad_()
    ref = t([[-1.4, -1.0], [-0.5, -0.9]])
    w = TokenMean().weights(torch.ones(2, 2, dtype=f64))
    without, _ = loss_of({}, inputs(logp, ref=ref), w, beta=0.0)
    with_kl, stats = loss_of({"kl": TokenKL(estimator)}, inputs(logp, ref=ref), w, beta=0.1)
    f = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}[estimator]
    assert (with_kl - without).item() == pytest.approx(0.1 * f(logp, ref).mean().item())
    assert (stats.sums["kl/mean"] / stats.tokens).item() == pytest.approx(f(logp, ref).mean().item())


def test_response_level_kl_equals_a_hand_computation():
    # Two completions of 2 and 3 tokens; response KL = sum of the tokens' log-ratios (k1).
    logp = t([[-1.0, -2.0, 0.0], [-0.5, -0.1, -1.0]]).requires_grad_()
    ref = t([[-1.5, -1.0, 0.0], [-0.7, -0.4, -0.2]])
    mask = t([[1, 1, 0], [1, 1, 1]])
    kl_1 = (-1.0 + 1.5) + (-2.0 + 1.0)  # -0.5
    kl_2 = (-0.5 + 0.7) + (-0.1 + 0.4) + (-1.0 + 0.2)  # -0.3
    # SequenceMean: the term is beta * mean over completions of the response KL.
    w = SequenceMean().weights(mask)
    without, _ = loss_of({}, inputs(logp, ref=ref, mask=mask), w, beta=0.0)
    with_kl, _ = loss_of({"kl": ResponseKL("k1")}, inputs(logp, ref=ref, mask=mask), w, beta=0.2)
    assert (with_kl - without).item() == pytest.approx(0.2 * (kl_1 + kl_2) / 2)
    # Every token of a completion gets the same KL gradient beta / N, whatever its length
    # (token-level k1 would give beta / (N * |y|)).
    g_resp = grad(with_kl - without, logp)
    assert close(g_resp, [[0.1, 0.1, 0.0], [0.1, 0.1, 0.1]])
    tok, _ = loss_of({"kl": TokenKL("k1")}, inputs(logp, ref=ref, mask=mask), w, beta=0.2)
    without, _ = loss_of({}, inputs(logp, ref=ref, mask=mask), w, beta=0.0)
    g_tok = grad(tok - without, logp)
    assert close(g_tok, [[0.05, 0.05, 0.0], [0.2 / 6, 0.2 / 6, 0.2 / 6]])


def test_unknown_estimator_is_rejected_with_the_allowed_names():
    with pytest.raises(ValueError, match="use one of k1, k2, k3"):
        TokenKL("k4")


# --- importance sampling: train/inference mismatch ----------------------------------------------


def test_token_tis_weights_the_policy_term_by_the_ratio_capped_at_c():
    old = torch.zeros(1, 4, dtype=f64)
    sampler = torch.log(t([[2.0, 0.5, 1 / 4, 1 / 10]]))  # pi_old / pi_sampler = 0.5, 2, 4, 10
    logp = old.clone().requires_grad_()
    x = inputs(logp, old, adv=t([1.0]), sampler=sampler)
    w, stats = TruncatedIS(level="token", clip_max=3.0)(x)
    assert w[0].tolist() == pytest.approx([0.5, 2.0, 3.0, 3.0])
    assert (stats.sums["is/capped_frac"] / stats.tokens).item() == 0.5
    # In the loss: the policy gradient of each token is scaled by its weight (ratio 1, A = 1).
    loss, _ = loss_of({"is": TruncatedIS("token", 3.0)}, x)
    assert grad(loss, logp)[0].tolist() == pytest.approx([-0.5, -2.0, -3.0, -3.0])


def test_sequence_mask_drops_sequences_whose_product_ratio_passes_c():
    # Sequence ratio = exp(sum of token log-ratios) (TRL's sequence_* modes): 4, 1.5 and 0.2.
    sampler = torch.log(t([[0.5, 0.5], [0.5, 4 / 3], [5.0, 1.0]]))  # pi_old = 1 (log 0)
    old = torch.zeros(3, 2, dtype=f64)
    logp = old.clone().requires_grad_()
    x = inputs(logp, old, adv=t([1.0, 1.0, 1.0]), sampler=sampler)
    w, stats = MaskedIS()(x)  # TRL's default: sequence level, C_max = 3, no lower bound
    assert close(w, [[0.0, 0.0], [1.5, 1.5], [0.2, 0.2]])
    assert (stats.sums["is/masked_frac"] / stats.tokens).item() == pytest.approx(2 / 6)
    # Per-token geometric means (2 and ~0.45) would not have masked sequence 0: it is the product.
    w_two_sided, _ = MaskedIS(clip_min=1 / 3)(x)  # two-sided [1/C, C]
    assert close(w_two_sided, [[0.0, 0.0], [1.5, 1.5], [0.0, 0.0]])
    loss, _ = loss_of({"is": MaskedIS()}, x)
    assert grad(loss, logp)[0].tolist() == [0.0, 0.0]  # a masked sequence contributes no gradient
    # The KL term is not weighted: a masked sequence still feels beta * KL.
    ref = t([[-0.5, -0.5], [0.0, 0.0], [0.0, 0.0]])
    x = inputs(logp, old, adv=t([1.0, 1.0, 1.0]), sampler=sampler, ref=ref)
    loss, _ = loss_of({"is": MaskedIS(), "kl": TokenKL("k1")}, x, beta=1.0)
    assert grad(loss, logp)[0].tolist() == [1.0, 1.0]


def test_masked_is_token_level_and_truncated_is_sequence_level():
    sampler = torch.log(t([[0.25, 1.0], [0.5, 0.5]]))
    old = torch.zeros(2, 2, dtype=f64)
    x = inputs(old.clone(), old, sampler=sampler)
    assert MaskedIS(level="token")(x)[0].tolist() == [[0.0, 1.0], [2.0, 2.0]]
    assert TruncatedIS(level="sequence")(x)[0].tolist() == [[3.0, 3.0], [3.0, 3.0]]  # 4 -> 3


def test_no_correction_and_padding_are_weight_one_and_never_counted():
    sampler = torch.log(t([[0.1, 1.0]]))
    old = torch.zeros(1, 2, dtype=f64)
    mask = t([[1, 0]])
    x = inputs(old.clone(), old, mask=mask, sampler=sampler)
    assert NoCorrection()(x)[0].tolist() == [[1.0, 1.0]]
    _, stats = TruncatedIS()(x)
    assert stats.sums["is/capped_frac"].item() == 1  # the completion token (ratio 10), not the padding


def test_is_classes_reject_bad_arguments():
    with pytest.raises(ValueError, match="level"):
        TruncatedIS(level="batch")
    with pytest.raises(ValueError, match="clip_min"):
        MaskedIS(clip_max=2.0, clip_min=3.0)


# --- entropy -----------------------------------------------------------------------------------


def identity_head(v: int) -> torch.nn.Linear:
    """lm_head whose logits are the hidden states themselves."""
    head = torch.nn.Linear(v, v, bias=False, dtype=f64)
    with torch.no_grad():
        head.weight.copy_(torch.eye(v, dtype=f64))
    return head


def test_chunked_entropy_matches_hand_values():
    logits = t([[0.0, 0.0, 0.0, 0.0], [math.log(3), 0.0, -1e9, -1e9]])  # [T=2, V=4]
    _, h = token_logprobs(logits, identity_head(4), torch.tensor([0, 1]), chunk_mib=0)  # one token per chunk
    assert h.tolist() == pytest.approx([math.log(4), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])


def test_entropy_is_logged_and_the_bonus_pushes_towards_uniform():
    logits = t([[[2.0, 0.0, -1.0]]]).requires_grad_()  # [n=1, T=1, V=3]
    logp, entropy = token_logprobs(logits, identity_head(3), torch.tensor([[0]]))  # [1, 1] each
    x = inputs(logp, adv=t([0.0]), entropy=entropy)
    loss0, stats = loss_of({}, x, entropy_coef=0.0)
    assert stats.sums["entropy/mean"].item() == pytest.approx(entropy.item())
    loss, _ = loss_of({}, x, entropy_coef=0.1)
    assert (loss - loss0).item() == pytest.approx(-0.1 * entropy.item())
    (g,) = torch.autograd.grad(loss, logits)
    # A gradient step (-g) lowers the top logit and raises the lowest one: towards uniform.
    assert g[0, 0, 0] > 0 and g[0, 0, 2] < 0


# --- truncation mask ---------------------------------------------------------------------------


def test_the_finish_reason_marks_truncated_rows_and_they_get_no_gradient():
    batch = RolloutBatch.build([[5], [6], [7]], [[1, 2], [3, 4, 9], [8]], [[0.0] * 2, [0.0] * 3, [0.0]],
                               t([1.0, -1.0, 0.5]), 0, finish_reasons=["stop", "length", "stop"])
    assert batch.truncated.tolist() == [False, True, False]
    assert batch.select(torch.tensor([1, 2])).truncated.tolist() == [True, False]
    masking = GRPOLoss(ClippedSurrogate(0.2), TokenKL(), NoCorrection(), 0.0, mask_truncated=True)
    mask = masking.loss_mask(batch.completion_mask.double(), batch.truncated)
    assert mask.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    keeping = GRPOLoss(ClippedSurrogate(0.2), TokenKL(), NoCorrection(), 0.0, mask_truncated=False)
    assert torch.equal(keeping.loss_mask(batch.completion_mask, batch.truncated), batch.completion_mask)
    logp = torch.full((3, 3), -1.0, dtype=f64, requires_grad=True)
    x = inputs(logp, adv=batch.advantages.double(), mask=mask)
    w = TokenMean().weights(mask)  # the 3 remaining tokens share the weight
    loss, stats = masking(x, w)
    g = grad(loss, logp)
    assert g[1].tolist() == [0.0, 0.0, 0.0]
    assert g[0, :2].tolist() == pytest.approx([-1 / 3, -1 / 3]) and g[2, 0].item() == pytest.approx(-0.5 / 3)
    assert stats.tokens.item() == 3


def test_build_without_finish_reasons_marks_nothing_truncated():
    batch = RolloutBatch.build([[5]], [[1, 2]], [[0.0, 0.0]], t([1.0]), 0)
    assert batch.truncated.tolist() == [False]


# --- stats and config --------------------------------------------------------------------------


def test_loss_stats_sum_over_micro_batches_and_terms():
    a = LossStats(tokens=torch.tensor(2.0), sums={"x": torch.tensor(3.0)}, maxes={"m": torch.tensor(1.0)})
    a.update(LossStats(sums={"y": torch.tensor(1.0)}))  # another term, same tokens
    a.add(LossStats(tokens=torch.tensor(4.0), sums={"x": torch.tensor(3.0)}, maxes={"m": torch.tensor(5.0)}))
    assert {k: v.item() for k, v in a.means().items()} == pytest.approx({"x": 1.0, "y": 1 / 6, "m": 5.0})


@pytest.mark.parametrize("override,message", [
    ("algo.kl.estimator=k4", "algo.kl={'_target_': 'grpo_cli.algo.kl.TokenKL', 'estimator': 'k4'} is invalid: KL estimator 'k4' is unknown: use one of k1, k2, k3"),
    ("algo.objective._target_=grpo_cli.algo.objectives.PPO", "algo.objective="),
    ("+algo.is_correction.clip_max=2", "algo.is_correction="),
])
def test_a_bad_variant_is_a_config_error_naming_the_key(override, message):
    cfg = compose(["model.path=/tmp", "data.path=/tmp", override])
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate(cfg)


@pytest.mark.parametrize("overrides,objective,kl,correction", [
    (["algo=grpo"], ClippedSurrogate, TokenKL, NoCorrection),
    (["algo=gspo"], GSPO, TokenKL, NoCorrection),
    (["algo.objective._target_=grpo_cli.algo.objectives.DualClip", "algo.kl._target_=grpo_cli.algo.kl.ResponseKL",
      "algo.is_correction._target_=grpo_cli.algo.correction.MaskedIS"], DualClip, ResponseKL, MaskedIS),
])
def test_algo_yaml_selects_the_parts(overrides, objective, kl, correction):
    cfg = compose(["model.path=/tmp", "data.path=/tmp", *overrides])
    validate(cfg)
    loss = GRPOLoss.from_config(cfg.algo)
    assert type(loss.objective) is objective and type(loss.kl) is kl and type(loss.is_correction) is correction
    assert loss.objective.eps_low == cfg.algo.epsilon  # the objective reads algo.epsilon
    if objective is GSPO:
        assert (loss.objective.eps_low, loss.objective.eps_high) == (3e-4, 4e-4)
