"""KL watch: what a run does when the policy drifts from the reference by more than `algo.kl_limit`.

The sources advise stopping or raising beta when the KL passes 5-10 nats. After every step the
loop hands the step's mean per-token KL to `KLWatch.update`, which, per `algo.kl_action`:

- warn: prints one line each step the KL is above the limit;
- stop: returns a `StopReason` naming the KL and the limit; the loop's one stop path writes the
  checkpoint and ends the run with the line that says how to resume;
- adapt: the adaptive KL controller of Ziegler et al. 2019 (TRL's AdaptiveKLController) moves beta
  multiplicatively so that the KL is steered towards the limit:
      e = clip(KL / limit - 1, -0.2, 0.2);  beta <- beta * (1 + e * n / horizon)
  with n the completions of the step.

The watch owns `beta`, the KL coefficient of the next step: the loop hands it to the learner.
"""

from __future__ import annotations

from grpo_cli.observe.console import console
from grpo_cli.state.stop import StopReason

KL_ACTIONS = ("warn", "stop", "adapt")


class AdaptiveKLController:
    """Ziegler et al. 2019, eq. (2): proportional control of log(beta) on KL / target - 1."""

    def __init__(self, beta: float, target: float, horizon: float):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n / self.horizon
        return self.value


class KLWatch:
    def __init__(self, limit: float | None, action: str, horizon: float, beta: float):
        self.limit, self.action, self.beta = limit, action, beta
        self.controller = AdaptiveKLController(beta, limit, horizon) if (limit and action == "adapt") else None

    @classmethod
    def from_config(cls, algo) -> KLWatch:
        return cls(algo.kl_limit, algo.kl_action, algo.kl_horizon, algo.beta)

    def update(self, step: int, kl, n: int) -> StopReason | None:
        """After step `step`, whose mean per-token KL was `kl`, over `n` completions: a reason to
        stop (algo.kl_action=stop), or None."""
        if self.limit is None or kl is None:
            return None
        kl = float(kl)  # a 0-dim tensor on the learner's device: one copy per step
        if self.controller is not None:
            self.beta = self.controller.update(kl, n)
            return None
        if kl <= self.limit:
            return None
        message = f"kl/mean={kl:.4g} passed algo.kl_limit={self.limit:g} at step {step}"
        if self.action == "warn":
            console.print(f"[yellow]warning:[/] {message}")
            return None
        return StopReason(f"{message} (algo.kl_action=stop)")

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = state["beta"]
        if self.controller is not None:
            self.controller.value = state["beta"]
