"""The GRPO loss per token, composed of parts that `algo` selects by `_target_`:

    loss_t = objective_t * m_t * w_t + beta * kl_t - entropy_coef * entropy_t

- objective (grpo_cli/algo/objectives.py): the policy term; PPO's clipped surrogate (GRPO, DAPO),
  dual-clip, or GSPO's sequence-level ratio.
- m (grpo_cli/algo/masks.py): policy masks, 0/1 per token or sequence (top-entropy tokens,
  off-policy sequences), by name under `algo.policy_masks`; none by default.
- w (grpo_cli/algo/correction.py): importance weights pi_old / pi_sampler for the train/inference
  mismatch (none, truncated, masked; per token or per sequence); no gradient.
- kl (grpo_cli/algo/kl.py): the penalty to the frozen reference, k1/k2/k3, per token or per response.
- entropy: the policy's entropy at each completion token (always logged; a bonus when
  `algo.entropy_coef` > 0, weighted as the loss is, or by `algo.entropy_aggregation` when set).
Tokens outside the loss mask (padding, and truncated completions with `algo.mask_truncated`)
weigh 0. The aggregation (grpo_cli/algo/aggregation.py) turns the per-token loss into one number.
A new variant is a small class in one of those modules plus a YAML, never a branch here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Term = Callable[["LossInputs"], "tuple[torch.Tensor, LossStats]"]


@dataclass
class LossInputs:
    """Everything a loss term may read, for one micro-batch of n completions, T columns."""

    logp: torch.Tensor  # [n, T] fp32, current policy, with grad
    old_logp: torch.Tensor  # [n, T] pi_old: the learner's log-probs under the sampling weights, no grad
    sampler_logp: torch.Tensor  # [n, T] the sampler's log-probs of the same tokens
    ref_logp: torch.Tensor | None  # [n, T] frozen reference, or None when beta == 0
    advantages: torch.Tensor  # [n]
    mask: torch.Tensor  # [n, T] 1.0 on tokens in the loss
    entropy: torch.Tensor | None = None  # [n, T] policy entropy per token (with grad for a bonus)


@dataclass
class LossStats:
    """Token-summed metrics of micro-batches, as 0-dim tensors on the learner's device.

    Sums (not means) so that micro-batches add up exactly; tensors (not floats) so that nothing
    waits for the device until the step's metrics are copied to the host, once.
    """

    tokens: torch.Tensor | float = 0.0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    maxes: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, other: LossStats) -> None:
        """Another micro-batch: token counts and sums add, maxes take the max."""
        self.tokens = self.tokens + other.tokens
        self.update(other)

    def update(self, other: LossStats) -> None:
        """Another loss term's stats over the same tokens (its token count is not added again)."""
        for k, v in other.sums.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        for k, v in other.maxes.items():
            self.maxes[k] = torch.maximum(self.maxes[k], v) if k in self.maxes else v

    def means(self) -> dict[str, torch.Tensor]:
        tokens = torch.as_tensor(self.tokens).clamp_min(1.0)
        return {k: v / tokens for k, v in self.sums.items()} | self.maxes


def masked_max(x: torch.Tensor, mask: torch.Tensor, empty: float = 0.0) -> torch.Tensor:
    """Max of x [n, T] over mask [n, T] as a 0-dim tensor (`empty` when the mask is empty), without
    boolean indexing, which would wait for the device."""
    m = mask.bool()
    top = torch.where(m, x, -torch.inf).amax()
    return torch.where(m.any(), top, torch.full_like(top, empty))


class GRPOLoss:
    """objective * masks * w + beta * kl - entropy_coef * entropy per token, weighted and summed."""

    def __init__(
        self, objective: Term, kl: Term, is_correction: Term, beta: float,
        entropy_coef: float = 0.0, mask_truncated: bool = False, policy_masks: dict[str, Term] | None = None,
        entropy_aggregation=None,
    ):
        self.objective, self.kl, self.is_correction = objective, kl, is_correction
        self.beta = beta  # a controller (adaptive KL) may change it between steps
        self.entropy_coef = entropy_coef  # and one (adaptive entropy) this
        self.mask_truncated = mask_truncated
        self.policy_masks = dict(policy_masks or {})
        # How the entropy bonus is weighted: None = as the loss (`weights`); an Aggregation (e.g. TRL's
        # token mean) = its own weights, which the learner computes over the optimiser batch.
        self.entropy_aggregation = entropy_aggregation

    @classmethod
    def from_config(cls, algo) -> GRPOLoss:
        from hydra.utils import instantiate

        masks = {name: instantiate(node) for name, node in algo.policy_masks.items() if node is not None}
        bonus = instantiate(algo.entropy_aggregation) if algo.entropy_aggregation else None  # {}: the loss's
        return cls(instantiate(algo.objective), instantiate(algo.kl), instantiate(algo.is_correction),
                   algo.beta, algo.entropy_coef, algo.mask_truncated, masks, bonus)

    @property
    def needs_entropy_grad(self) -> bool:
        return self.entropy_coef != 0

    def loss_mask(self, completion_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
        """Tokens in the loss: completion tokens, less those of truncated completions when masked.

        completion_mask [N, T], truncated [N] bool (the completion hit max_tokens) -> [N, T].
        """
        keep = ~truncated if self.mask_truncated else torch.ones_like(truncated)  # [N]
        return completion_mask * keep.unsqueeze(-1).to(completion_mask.dtype)  # [N, T]

    def __call__(self, x: LossInputs, weights: torch.Tensor,
                 entropy_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, LossStats]:
        """`weights` [n, T] from an Aggregation (`entropy_weights` [n, T] from `entropy_aggregation`,
        when set); returns the weighted sum and the stats."""
        policy, stats = self.objective(x)  # [n, T]
        for mask in self.policy_masks.values():
            keep, mask_stats = mask(x)  # [n, T] or [n, 1], 0/1
            policy = policy * keep  # [n, T]
            stats.update(mask_stats)
        w, w_stats = self.is_correction(x)  # [n, T], no grad
        stats.update(w_stats)
        per_token = policy * w  # [n, T]
        if x.ref_logp is not None:  # beta > 0 (the reference is loaded only then)
            kl, kl_stats = self.kl(x)  # [n, T]
            per_token = per_token + self.beta * kl
            stats.update(kl_stats)
        loss = (per_token * weights).sum()
        if x.entropy is not None:
            bonus_weights = weights if entropy_weights is None else entropy_weights  # [n, T]
            loss = loss - self.entropy_coef * (x.entropy * bonus_weights).sum()
            stats.update(LossStats(sums={"entropy/mean": (x.entropy.detach() * x.mask).sum()}))
        return loss, stats
