"""KL watch: what a run does when the policy drifts from the reference by more than `algo.kl_limit`.

The sources advise stopping or raising beta when the KL passes 5-10 nats. After every step the
loop hands the step's mean per-token KL to `KLWatch.update`, which, per `algo.kl_action`:

- warn: prints one line each step the KL is above the limit;
- stop: calls `stop(step)`, which saves a checkpoint and returns where, and raises KLLimitExceeded,
  whose one line names the KL and the limit;
- adapt: the adaptive KL controller of Ziegler et al. 2019 (TRL's AdaptiveKLController) moves beta
  multiplicatively so that the KL is steered towards the limit:
      e = clip(KL / limit - 1, -0.2, 0.2);  beta <- beta * (1 + e * n / horizon)
  with n the completions of the step.

`beta` is the coefficient the loss uses: the watch sets `loss.beta` for the next step.
"""

from __future__ import annotations

from collections.abc import Callable

from grpo_cli.errors import UserError
from grpo_cli.observe.logger import console

KL_ACTIONS = ("warn", "stop", "adapt")


class KLLimitExceeded(UserError):
    """`algo.kl_action=stop` and the KL passed `algo.kl_limit`; the message says by how much."""


class AdaptiveKLController:
    """Ziegler et al. 2019, eq. (2): proportional control of log(beta) on KL / target - 1."""

    def __init__(self, beta: float, target: float, horizon: float):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n / self.horizon
        return self.value


class KLWatch:
    def __init__(self, limit: float | None, action: str, horizon: float, loss, stop: Callable[[int], object]):
        self.limit, self.action, self.loss, self.stop = limit, action, loss, stop
        self.controller = AdaptiveKLController(loss.beta, limit, horizon) if (limit and action == "adapt") else None

    @classmethod
    def from_config(cls, algo, loss, stop: Callable[[int], object]) -> KLWatch:
        return cls(algo.kl_limit, algo.kl_action, algo.kl_horizon, loss, stop)

    def update(self, step: int, kl, n: int) -> None:
        """After step `step`, whose mean per-token KL was `kl`, over `n` completions."""
        if self.limit is None or kl is None:
            return
        kl = float(kl)  # a 0-dim tensor on the learner's device: one copy per step
        if self.controller is not None:
            self.loss.beta = self.controller.update(kl, n)
            return
        if kl <= self.limit:
            return
        message = f"kl/mean={kl:.4g} passed algo.kl_limit={self.limit:g} at step {step}"
        if self.action == "warn":
            console.print(f"[yellow]warning:[/] {message}")
            return
        saved = self.stop(step)
        raise KLLimitExceeded(f"{message}; stopped (algo.kl_action=stop), checkpoint in {saved}")

    def state_dict(self) -> dict:
        return {"beta": self.loss.beta}

    def load_state_dict(self, state: dict) -> None:
        self.loss.beta = state["beta"]
        if self.controller is not None:
            self.controller.value = state["beta"]
