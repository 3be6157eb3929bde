"""The KL penalty to the frozen reference: which estimator, and per token or per response.

Schulman's estimators of KL(pi || ref) from tokens sampled from pi, with d = log pi - log ref:
    k1 = d                      unbiased, high variance, can be negative
    k2 = d^2 / 2                biased, low variance, >= 0
    k3 = exp(-d) + d - 1        unbiased, low variance, >= 0 (DeepSeekMath's GRPO)
A KL term returns the per-token penalty [n, T] that the loss adds as `beta * kl` (beta is
`algo.beta`, which the loss owns so that a controller can change it). Selected by
`algo.kl._target_`; every KL term takes `estimator`.
"""

from __future__ import annotations

import torch

from grpo_cli.algo.loss import LossInputs, LossStats, masked_max


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp  # [n, T]


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2  # [n, T]


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """exp(d) - d - 1 with d = ref - logp: unbiased, always >= 0, 0 exactly where the two agree."""
    d = ref_logp - logp  # [n, T]
    return torch.exp(d) - d - 1  # [n, T]


ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


class TokenKL:
    """The penalty on each token is the estimator at that token (DeepSeekMath, verl's `kl_loss_type`;
    TRL's KL with `use_bias_correction_kl=False`: TRL's default weights it, see RatioWeightedKL)."""

    def __init__(self, estimator: str = "k3"):
        if estimator not in ESTIMATORS:
            raise ValueError(f"KL estimator {estimator!r} is unknown: use one of {', '.join(ESTIMATORS)}")
        self.estimator = ESTIMATORS[estimator]

    def per_token(self, x: LossInputs) -> torch.Tensor:
        return self.estimator(x.logp, x.ref_logp)  # [n, T]

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, LossStats]:
        per_token = self.per_token(x)  # [n, T]
        k = self.estimator(x.logp.detach(), x.ref_logp) * x.mask  # [n, T] per-token KL, for the KL watch
        return per_token, LossStats(tokens=x.mask.sum(), sums={"kl/mean": k.sum()}, maxes={"kl/max": masked_max(k, x.mask)})


class ResponseKL(TokenKL):
    """Response-level KL: one number per completion, the sum of its tokens' estimator values
    (with k1, the sum of per-token log-ratios, log pi(y) - log ref(y)), charged to every token of
    the completion. With `SequenceMean` aggregation the loss term is beta * mean over completions
    of that sum; a token's gradient then no longer shrinks with its completion's length."""

    def per_token(self, x: LossInputs) -> torch.Tensor:
        per_seq = (self.estimator(x.logp, x.ref_logp) * x.mask).sum(-1, keepdim=True)  # [n, 1]
        return per_seq.expand_as(x.mask)  # [n, T]


class RatioWeightedKL(TokenKL):
    """The unbiased KL gradient off-policy (DeepSeek-V3.2, arXiv 2512.02556; TRL's default
    `use_bias_correction_kl=True`): the estimator times the importance ratio r = pi / pi_old, with
    r's gradient. The tokens were sampled from pi_old, so E_old[r * k3] is KL(pi || ref) under pi and
    its gradient is the reverse KL's. On-policy r = 1 in value but not in gradient: the term adds
    k3 * grad log pi. `level=sequence` uses GSPO's sequence ratio (as TRL does with
    `importance_sampling_level="sequence"`). grpo-cli's default stays `TokenKL`, DeepSeekMath's k3."""

    def __init__(self, estimator: str = "k3", level: str = "token"):
        super().__init__(estimator)
        if level not in ("token", "sequence"):
            raise ValueError(f"RatioWeightedKL.level={level!r} is invalid: use token or sequence")
        self.level = level

    def per_token(self, x: LossInputs) -> torch.Tensor:
        log_ratio = x.logp - x.old_logp  # [n, T]
        if self.level == "sequence":
            log_ratio = (log_ratio * x.mask).sum(-1, keepdim=True) / x.mask.sum(-1, keepdim=True).clamp_min(1)  # [n, 1]
        return self.estimator(x.logp, x.ref_logp) * torch.exp(log_ratio)  # [n, T]
