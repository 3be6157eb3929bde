"""GRPO math on hand-built tensors: the seeds' toy vectors, a slow reference, gradient facts."""

import math

import pytest
import torch

from grpo_cli.algo.advantages import group_advantages
from grpo_cli.algo.aggregation import ConstantNormalizer, SequenceMean, TokenMean
from grpo_cli.algo.correction import NoCorrection
from grpo_cli.algo.kl import TokenKL, kl_k3
from grpo_cli.algo.loss import GRPOLoss, LossInputs
from grpo_cli.algo.objectives import ClippedSurrogate


class DefaultLoss:
    """GRPO's default composition (clipped surrogate, token k3 KL, no IS correction), called
    with plain tensors."""

    def __init__(self, epsilon, epsilon_high, beta):
        self.loss = GRPOLoss(ClippedSurrogate(epsilon, epsilon_high), TokenKL("k3"), NoCorrection(), beta)

    def __call__(self, logp, old, ref, adv, mask, weights):
        return self.loss(LossInputs(logp, old, old, ref, adv, mask), weights)


# --- advantages: the seeds' toy examples -------------------------------------------------------


def test_seed_arithmetic_example_g4():
    # shared/seeds/000: rewards [1,0,0,0] -> mu 0.25, sigma ~0.43, A = [+1.75, -0.58, -0.58, -0.58]
    out = group_advantages(torch.tensor([[1.0, 0, 0, 0]]), eps=1e-8)
    assert out.mean.item() == pytest.approx(0.25)
    assert out.std.item() == pytest.approx(math.sqrt(3) / 4)  # 0.4330, population std
    assert out.advantages[0].tolist() == pytest.approx([math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)])
    assert out.advantages[0].tolist() == pytest.approx([1.73, -0.58, -0.58, -0.58], abs=0.01)


def test_seed_g8_example():
    # shared/seeds/002: [1,0,1,0,1,1,0,1] -> mu 0.625, sigma 0.484, +0.77 / -1.29
    out = group_advantages(torch.tensor([[1.0, 0, 1, 0, 1, 1, 0, 1]]), eps=1e-8)
    assert out.mean.item() == pytest.approx(0.625)
    assert out.std.item() == pytest.approx(0.484, abs=1e-3)
    adv = out.advantages[0]
    assert adv[0].item() == pytest.approx(0.77, abs=0.01)
    assert adv[1].item() == pytest.approx(-1.29, abs=0.01)
    assert adv.sum().item() == pytest.approx(0.0, abs=1e-6)


def test_advantages_rowwise_eps_and_dr_grpo():
    r = torch.tensor([[1.0, 2, 3, 4], [5.0, 5, 5, 7]])
    out = group_advantages(r, eps=0.1)
    for row, adv in zip(r, out.advantages):
        mu, sd = row.mean(), row.std(unbiased=False)
        assert torch.allclose(adv, (row - mu) / (sd + 0.1))
    centred = group_advantages(r, scale=False).advantages
    assert torch.allclose(centred, r - r.mean(-1, keepdim=True))


def test_zero_variance_groups_are_detected_and_get_zero_advantage():
    r = torch.tensor([[0.1, 0.1, 0.1], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [2.0, float("nan"), float("nan")]])
    out = group_advantages(r)
    assert out.zero_std.tolist() == [True, False, True, True]
    assert out.frac_zero_std == pytest.approx(0.75)
    assert torch.all(out.advantages[[0, 2, 3]].abs() < 1e-6)


def test_nan_rewards_are_left_out_of_the_statistics():
    r = torch.tensor([[1.0, float("nan"), 0.0, 0.0, 0.0]])
    out = group_advantages(r, eps=1e-8)
    ref = group_advantages(torch.tensor([[1.0, 0, 0, 0]]), eps=1e-8)
    assert out.advantages[0, 1].item() == 0.0
    assert torch.allclose(out.advantages[0, [0, 2, 3, 4]], ref.advantages[0])
    assert not torch.isnan(out.advantages).any()


# --- loss: vectorised vs a slow, independent reference ----------------------------------------

AGGREGATIONS = [SequenceMean(), TokenMean(), ConstantNormalizer(max_tokens=9)]


def slow_reference(logp, old, ref, adv, mask, agg, eps_lo, eps_hi, beta):
    """Plain Python loops over tokens, written from the formula, not from loss.py."""
    n, t = logp.shape
    lengths = [sum(float(mask[i, j]) for j in range(t)) for i in range(n)]
    total_tokens = sum(lengths)
    loss = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        for j in range(t):
            if mask[i, j] == 0:
                continue
            ratio = torch.exp(logp[i, j] - old[i, j])
            clipped = torch.clamp(ratio, 1 - eps_lo, 1 + eps_hi)
            term = -torch.min(ratio * adv[i], clipped * adv[i])
            if beta > 0:
                d = ref[i, j] - logp[i, j]
                term = term + beta * (torch.exp(d) - d - 1)
            if isinstance(agg, SequenceMean):
                term = term / lengths[i] / n
            elif isinstance(agg, TokenMean):
                term = term / total_tokens
            else:
                term = term / (n * agg.max_tokens)
            loss = loss + term
    return loss


def random_batch(seed, n=6, t=9):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(n, t, generator=g, dtype=torch.float64) * 3).requires_grad_()
    old = (logp.detach() + 0.4 * torch.randn(n, t, generator=g, dtype=torch.float64)).clamp(max=0)
    ref = (logp.detach() + 0.3 * torch.randn(n, t, generator=g, dtype=torch.float64)).clamp(max=0)
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).double()
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("agg", AGGREGATIONS, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_vectorised_loss_and_gradient_match_slow_reference(agg, seed, beta):
    logp, old, ref, adv, mask = random_batch(seed)
    loss_fn = DefaultLoss(epsilon=0.2, epsilon_high=0.28, beta=beta)
    loss, _ = loss_fn(logp, old, ref, adv, mask, agg.weights(mask))
    (grad,) = torch.autograd.grad(loss, logp)
    expected = slow_reference(logp, old, ref, adv, mask, agg, 0.2, 0.28, beta)
    (expected_grad,) = torch.autograd.grad(expected, logp)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(grad, expected_grad, atol=1e-6)


@pytest.mark.parametrize("agg", AGGREGATIONS, ids=lambda a: type(a).__name__)
def test_micro_batches_add_up_to_the_full_batch(agg):
    logp, old, ref, adv, mask = random_batch(3, n=8)
    loss_fn = DefaultLoss(epsilon=0.2, epsilon_high=None, beta=0.04)
    w = agg.weights(mask)
    full, _ = loss_fn(logp, old, ref, adv, mask, w)
    parts = sum(loss_fn(logp[s], old[s], ref[s], adv[s], mask[s], w[s])[0] for s in (slice(0, 3), slice(3, 8)))
    assert parts.item() == pytest.approx(full.item(), abs=1e-12)


def test_at_ratio_one_gradient_is_the_plain_policy_gradient():
    logp, _, _, adv, mask = random_batch(4)
    w = TokenMean().weights(mask)
    loss, stats = DefaultLoss(0.2, None, beta=0.0)(logp, logp.detach(), None, adv, mask, w)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(grad, -adv[:, None] * w)  # d/dlogp of -A * logp, weighted
    assert stats.sums["clip_frac"] == 0


@pytest.mark.parametrize("adv_sign", [1.0, -1.0])
def test_clipping_stops_gradient_only_outside_the_band_on_the_advantage_side(adv_sign):
    # Tokens with ratio 0.5 (below), 1.0 (inside), 1.5 (above) the band [0.8, 1.2].
    old = torch.zeros(1, 3, dtype=torch.float64)
    logp = torch.log(torch.tensor([[0.5, 1.0, 1.5]], dtype=torch.float64)).requires_grad_()
    mask = torch.ones(1, 3, dtype=torch.float64)
    adv = torch.tensor([adv_sign], dtype=torch.float64)
    loss, stats = DefaultLoss(0.2, None, beta=0.0)(logp, old, None, adv, mask, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    ratio = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    if adv_sign > 0:  # A > 0: above the band is clipped, below still pushes up
        expected = torch.tensor([-0.5, -1.0, 0.0], dtype=torch.float64)
        assert stats.sums["clip_frac/high"] == 1 and stats.sums["clip_frac/low"] == 0
    else:  # A < 0: below the band is clipped, above still pushes down
        expected = torch.tensor([0.0, 1.0, 1.5], dtype=torch.float64)
        assert stats.sums["clip_frac/low"] == 1 and stats.sums["clip_frac/high"] == 0
    # Unclipped tokens get d/dlogp of -A * ratio = -A * ratio; clipped ones get exactly 0.
    assert torch.equal(grad[0], expected)
    assert torch.allclose(grad[0], -adv_sign * ratio * (expected != 0))


def test_kl_k3_is_zero_at_equality_and_positive_otherwise():
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    assert torch.equal(kl_k3(logp, logp), torch.zeros(4))
    other = logp + torch.tensor([0.1, -0.3, 1.0, -2.0])
    assert torch.all(kl_k3(logp, other) > 0)


def test_kl_enters_the_loss_as_beta_times_k3():
    logp, old, ref, adv, mask = random_batch(5)
    w = SequenceMean().weights(mask)
    without, _ = DefaultLoss(0.2, None, beta=0.0)(logp, old, None, adv, mask, w)
    with_kl, stats = DefaultLoss(0.2, None, beta=0.5)(logp, old, ref, adv, mask, w)
    assert (with_kl - without).item() == pytest.approx(0.5 * (kl_k3(logp, ref) * w).sum().item())
    assert stats.sums["kl/mean"] / stats.tokens == pytest.approx(((kl_k3(logp, ref) * mask).sum() / mask.sum()).item())


def test_aggregations_reject_bad_constant():
    with pytest.raises(ValueError, match="max_tokens"):
        ConstantNormalizer(0)
