"""What stops a run early, cleanly: Ctrl-C / SIGTERM, too many NaN/Inf steps in a row, a reward
that keeps failing. The loop finishes its step, writes a checkpoint and exits non-zero with a
line that says how to resume."""

from __future__ import annotations

import math
import os
import signal
import sys

import torch

from grpo_cli.errors import UserError


class RunStopped(UserError):
    """The run stopped early after writing a checkpoint; the message says why and how to resume."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


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


class StopSignals:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second Ctrl-C exits at once."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread): no handlers
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None and signum == signal.SIGINT:
            print(f"\ngrpo-train: second {name}: exiting now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(130)
        self.received = name
        print(f"\ngrpo-train: {name} received: finishing this step, then writing a checkpoint "
              "(Ctrl-C again to exit at once)", file=sys.stderr, flush=True)

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.received)) if self.received else 1


def stop_reason(signals: StopSignals, guard: BadStepGuard | None, rewards) -> tuple[str, int] | None:
    """Why the run must stop now (message, exit code), or None."""
    if signals.received:
        return f"{signals.received} received", signals.exit_code
    if guard is not None and guard.exhausted:
        return f"{int(guard.in_a_row)} optimiser steps in a row had NaN/Inf gradients (train.max_bad_steps={guard.max_bad})", 1
    failing = getattr(rewards, "failing", None)
    if failing:
        return failing, 1
    return None
