"""The entropy bonus's coefficient: fixed (`algo.entropy_coef`), or adaptive (`algo.entropy_target`).

Adaptive (Skywork-OR1, He et al. 2025, arXiv 2505.22312, sec. 3.2; TRL's `use_adaptive_entropy`):
after each step, with e the step's mean per-token entropy,
    c <- clip(c + delta, c_min, c_max) if e <= target else clip(c - delta, c_min, c_max)
and the bonus applied in a step is c while the last measured e is at or below the target, else 0
(none before the first measurement): the bonus only props entropy up once it has collapsed.
TRL updates per optimiser step, this per training step (the same with one optimiser step per step,
grpo-cli's default). The loop hands `coef` to the learner and saves the state in checkpoints.
"""

from __future__ import annotations

import math


class EntropyControl:
    def __init__(self, coef: float, target: float | None = None, delta: float = 0.005,
                 coef_min: float = 0.0, coef_max: float = 1.0):
        self.value, self.target, self.delta, self.min, self.max = coef, target, delta, coef_min, coef_max
        self.last_entropy = math.inf  # no measurement yet: no adaptive bonus in the first step

    @classmethod
    def from_config(cls, algo) -> EntropyControl:
        return cls(algo.entropy_coef, algo.entropy_target, algo.entropy_coef_delta, algo.entropy_coef_min,
                   algo.entropy_coef_max)

    @property
    def coef(self) -> float:
        """The coefficient of the next step's bonus."""
        if self.target is None:
            return self.value
        return self.value if self.last_entropy <= self.target else 0.0

    def update(self, entropy) -> None:
        """After a step whose mean per-token entropy was `entropy` (a 0-dim tensor, or None when no
        update ran)."""
        if self.target is None or entropy is None:
            return
        e = float(entropy)  # one copy per step
        step = self.delta if e <= self.target else -self.delta
        self.value = min(max(self.value + step, self.min), self.max)
        self.last_entropy = e

    def state_dict(self) -> dict:
        return {"value": self.value, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.last_entropy = state["value"], state["last_entropy"]
