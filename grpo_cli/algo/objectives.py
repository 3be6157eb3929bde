"""Policy objectives: the policy-gradient part of the per-token loss, one small class each.

Each takes the micro-batch's `LossInputs` and returns the per-token loss [n, T] (to be minimised)
and its token-summed statistics. Selected by `algo.objective._target_` (conf/algo/*.yaml); every
objective takes `epsilon` and `epsilon_high`, so switching `_target_` alone is enough (those without
a hard clip, CISPO, SAPO and VESPO, use them only for the `clip_frac` statistics: the share of tokens
PPO's clip would have cut, a measure of how far the policy moved).

Advantages are [n] (one per completion) or [n, T] (per token, e.g. for GSPO-token); `token_adv`
gives both as something that broadcasts against [n, T].
"""

from __future__ import annotations

import math

import torch

from grpo_cli.algo.loss import LossInputs, LossStats, masked_max


def token_adv(x: LossInputs) -> torch.Tensor:
    """The advantages as [n, 1] (one per completion) or [n, T] (one per token)."""
    return x.advantages if x.advantages.dim() == 2 else x.advantages.unsqueeze(-1)


def sequence_log_ratio(x: LossInputs) -> torch.Tensor:
    """GSPO's log s = mean over the completion's tokens of log(pi / pi_old): [n, 1]."""
    lengths = x.mask.sum(-1, keepdim=True).clamp_min(1)  # [n, 1]
    return ((x.logp - x.old_logp) * x.mask).sum(-1, keepdim=True) / lengths  # [n, 1]


class ClippedSurrogate:
    """PPO's clipped surrogate per token: -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A),
    r = pi / pi_old per token (DeepSeekMath's GRPO; DAPO's clip-higher with epsilon_high > epsilon)."""

    def __init__(self, epsilon: float = 0.2, epsilon_high: float | None = None):
        self.eps_low = epsilon
        self.eps_high = epsilon if epsilon_high is None else epsilon_high

    def log_ratio(self, x: LossInputs) -> torch.Tensor:
        """log r per token, [n, T] (GSPO overrides this with one value per sequence)."""
        return x.logp - x.old_logp  # [n, T]

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, LossStats]:
        ratio = torch.exp(self.log_ratio(x))  # [n, T] or [n, 1]
        adv = token_adv(x)  # [n, 1] or [n, T]
        clipped = ratio.clamp(1 - self.eps_low, 1 + self.eps_high)
        per_token = -torch.minimum(ratio * adv, clipped * adv)  # [n, T] (broadcast from [n, 1] if sequence-level)
        per_token = self.bound(per_token, adv).expand_as(x.mask)  # [n, T]
        return per_token, self.stats(ratio.detach().expand_as(x.mask), adv, x.mask)

    def bound(self, per_token: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """A further bound on the loss (dual-clip); none here."""
        return per_token

    def stats(self, ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> LossStats:
        # Clipped tokens are those whose gradient the clip removes: below the band with A < 0,
        # above it with A > 0.
        low = (ratio < 1 - self.eps_low) & (adv < 0)  # [n, T]
        high = (ratio > 1 + self.eps_high) & (adv > 0)  # [n, T]
        m = mask.bool()
        sums = {
            "clip_frac/low": (low & m).sum(),
            "clip_frac/high": (high & m).sum(),
            "clip_frac": ((low | high) & m).sum(),
            "ratio/mean": (ratio * mask).sum(),
        }
        maxes = {"ratio/max": masked_max(ratio, mask, empty=1.0)}
        return LossStats(tokens=mask.sum(), sums=sums, maxes=maxes)


def ppo_stats(obj: ClippedSurrogate, x: LossInputs, log_ratio: torch.Tensor) -> LossStats:
    """The clip statistics of `obj`'s PPO band for an objective that does not clip (CISPO, SAPO, VESPO)."""
    ratio = torch.exp(log_ratio.detach()).expand_as(x.mask)  # [n, T]
    return ClippedSurrogate.stats(obj, ratio, token_adv(x).expand_as(x.mask), x.mask)


class DualClip(ClippedSurrogate):
    """Dual-clip PPO (Ye et al. 2020, "Mastering Complex Control in MOBA Games"; verl's `clip_ratio_c`):
    for A < 0 the clipped surrogate's loss -r * A grows without bound as r grows, so it is also
    capped at -c * A (c > 1; 3 by default). Tokens with A >= 0 are unchanged."""

    def __init__(self, epsilon: float = 0.2, epsilon_high: float | None = None, clip_c: float = 3.0):
        super().__init__(epsilon, epsilon_high)
        if clip_c <= 1:
            raise ValueError(f"DualClip.clip_c={clip_c} must be > 1")
        self.clip_c = clip_c

    def bound(self, per_token: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        capped = torch.minimum(per_token, -self.clip_c * adv)  # [n, T]: the loss is at most -c * A
        return torch.where(adv < 0, capped, per_token)  # [n, T]

    def stats(self, ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> LossStats:
        s = super().stats(ratio, adv, mask)
        s.sums["clip_frac/dual"] = ((ratio > self.clip_c) & (adv < 0) & mask.bool()).sum()
        return s


class GSPO(ClippedSurrogate):
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"; TRL's
    `importance_sampling_level="sequence"`): one ratio per sequence, the geometric mean of its token
    ratios, s = exp(mean_t log(pi / pi_old)), clipped per sequence with its own, much narrower range
    (the paper uses epsilon 3e-4, epsilon_high 4e-4): a sequence is clipped as a whole or not at all."""

    def log_ratio(self, x: LossInputs) -> torch.Tensor:
        return sequence_log_ratio(x)  # [n, 1]


class GSPOToken(GSPO):
    """GSPO-token (Zheng et al. 2025, eq. 13): the sequence ratio's value on every token, with each
    token's own gradient: s_t = sg[s] * pi(y_t) / sg[pi(y_t)]. It is GSPO with token-level
    advantages; with one advantage per completion (GRPO's) its loss and gradient equal GSPO's."""

    def log_ratio(self, x: LossInputs) -> torch.Tensor:
        return sequence_log_ratio(x).detach() + x.logp - x.logp.detach()  # [n, T], value log s


class GSPODualClip(GSPO, DualClip):
    """GSPO's sequence ratio with dual-clip's cap (-c * A for A < 0): TRL's `delta` (INTELLECT-2's
    two-sided clip) with `importance_sampling_level="sequence"`. Takes `clip_c` as DualClip does."""


class CISPO(ClippedSurrogate):
    """CISPO (MiniMax-M1, arXiv 2506.13585; TRL's `loss_type="cispo"`): clip the importance weight,
    not the update: -sg[min(r, clip_max)] * A * log pi per token. Every token keeps a gradient (PPO's
    clip drops those outside the band), its size bounded by the detached weight. Use it with
    `TokenMean` (the paper's token mean over the batch). `clip_max` is the absolute bound on r (TRL's
    `epsilon_high` for cispo, ScaleRL's eps_max, 5.0 recommended); None takes 1 + epsilon_high."""

    def __init__(self, epsilon: float = 0.2, epsilon_high: float | None = None, clip_max: float | None = None):
        super().__init__(epsilon, epsilon_high)
        self.clip_max = 1 + self.eps_high if clip_max is None else clip_max

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, LossStats]:
        log_ratio = x.logp - x.old_logp  # [n, T]
        weight = torch.exp(log_ratio).clamp(max=self.clip_max).detach()  # [n, T], no gradient
        adv = token_adv(x)  # [n, 1] or [n, T]
        per_token = -weight * adv * x.logp  # [n, T]
        stats = ppo_stats(self, x, log_ratio)
        stats.sums["cispo/clip_frac"] = ((weight >= self.clip_max) & (adv > 0) & x.mask.bool()).sum()
        return per_token, stats


class SAPO(ClippedSurrogate):
    """SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization", arXiv 2511.20347; TRL's
    `loss_type="sapo"`): a smooth gate in place of the hard clip,
    -(4 / tau) * sigmoid(tau * (r - 1)) * A per token, whose gradient r * sigmoid'(...) * 4 fades
    as r leaves 1 instead of stopping at a band edge. Negative advantages get a higher temperature
    (faster fading): their updates destabilise more (the paper's tau_neg > tau_pos)."""

    def __init__(self, epsilon: float = 0.2, epsilon_high: float | None = None,
                 temperature_pos: float = 1.0, temperature_neg: float = 1.05):
        super().__init__(epsilon, epsilon_high)
        self.tau_pos, self.tau_neg = temperature_pos, temperature_neg

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, LossStats]:
        log_ratio = self.log_ratio(x)  # [n, T]
        adv = token_adv(x)  # [n, 1] or [n, T]
        tau = torch.where(adv > 0, self.tau_pos, self.tau_neg)  # like adv
        gate = torch.sigmoid(tau * (torch.exp(log_ratio) - 1)) * 4 / tau  # [n, T]
        return (-gate * adv).expand_as(x.mask), ppo_stats(self, x, log_ratio)


class VESPO(ClippedSurrogate):
    """VESPO (arXiv 2602.10693; TRL's `loss_type="vespo"`): no clip; each sequence's policy
    gradient A * grad log pi is scaled by a Gamma-shaped weight of its sequence-level importance
    weight w = exp(sum_t log(pi / pi_old)):  phi(w) = exp(lambda) * w^k * exp(-lambda * w),
    phi(1) = 1, detached. (k, lambda) are (k_pos, lambda_pos) for A >= 0 and (k_neg, lambda_neg)
    for A < 0: phi falls towards 0 for w far from 1 on either side, asymmetrically. As TRL: token log
    ratios clamped to +-20, log w to [log 1e-8, 20]. Use it with `TokenMean` (TRL's aggregation).
    An `is_correction` multiplies the loss as for every objective (TRL folds it into w instead)."""

    def __init__(self, epsilon: float = 0.2, epsilon_high: float | None = None, k_pos: float = 2.0,
                 lambda_pos: float = 3.0, k_neg: float = 3.0, lambda_neg: float = 2.0):
        super().__init__(epsilon, epsilon_high)
        self.k_pos, self.lambda_pos, self.k_neg, self.lambda_neg = k_pos, lambda_pos, k_neg, lambda_neg

    @torch.no_grad()
    def phi(self, x: LossInputs) -> torch.Tensor:
        """The Gamma weight per sequence, [n, 1], no gradient."""
        log_ratio = (x.logp - x.old_logp).clamp(-20.0, 20.0)  # [n, T]
        log_w = (log_ratio * x.mask).sum(-1, keepdim=True).clamp(math.log(1e-8), 20.0)  # [n, 1]
        nonneg = token_adv(x)[:, :1] >= 0  # [n, 1]: the sign of the sequence's advantage
        k = torch.where(nonneg, self.k_pos, self.k_neg)  # [n, 1]
        lam = torch.where(nonneg, self.lambda_pos, self.lambda_neg).clamp_min(1e-4)  # [n, 1]
        log_phi = lam + k * log_w - lam * torch.exp(log_w)  # [n, 1]
        return torch.exp(log_phi).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # [n, 1]

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, LossStats]:
        phi = self.phi(x)  # [n, 1]
        per_token = -phi * token_adv(x) * x.logp  # [n, T]
        stats = ppo_stats(self, x, x.logp - x.old_logp)
        stats.sums["vespo/phi_mean"] = (phi * x.mask).sum()
        return per_token, stats
