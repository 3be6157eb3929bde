"""NaN/Inf gradients: the optimiser step is skipped and counted; too many in a row stop the run."""

from __future__ import annotations

import math

import torch


class BadStepGuard:
    """Skips optimiser steps whose gradient norm is NaN/Inf and counts them.

    With a fused optimiser the skip happens on the device (the kernel's `found_inf` input, as
    GradScaler uses it), so no host sync; other optimisers read the norm on the host once per
    optimiser step. The counts stay 0-dim tensors until the loop reads them once per step.
    After `max_bad` skipped steps in a row (0 = never) `exhausted` is true and the run stops.
    """

    def __init__(self, max_bad: int):
        self.max_bad, self.in_a_row, self.total = max_bad, torch.zeros(()), torch.zeros(())

    def step(self, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor) -> None:
        """`optimizer.step()`, unless `grad_norm` (0-dim, on the device) is NaN/Inf."""
        bad = (~torch.isfinite(grad_norm)).float()  # 0-dim, on the device
        self.in_a_row = (self.in_a_row.to(bad.device) + 1) * bad
        self.total = self.total.to(bad.device) + bad
        if optimizer.defaults.get("fused"):
            optimizer.found_inf = bad  # the fused kernel leaves params and state alone when it is 1
            optimizer.step()
        elif self.finite_on_host(grad_norm):
            optimizer.step()

    @staticmethod
    def finite_on_host(grad_norm: torch.Tensor) -> bool:
        return math.isfinite(float(grad_norm))

    @property
    def exhausted(self) -> bool:
        return self.max_bad > 0 and int(self.in_a_row) >= self.max_bad

    def state_dict(self) -> dict:
        return {"in_a_row": int(self.in_a_row), "total": int(self.total)}

    def load_state_dict(self, state: dict) -> None:
        self.in_a_row, self.total = torch.tensor(float(state["in_a_row"])), torch.tensor(float(state["total"]))
