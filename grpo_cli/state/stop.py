"""Why a run stops early: every reason becomes one `StopReason`.

Ctrl-C / SIGTERM, too many NaN/Inf steps in a row, a reward that keeps failing, a vLLM server
that died, the KL watch's limit: each is a `StopReason` (a message and an exit code). The loop
hands it to the one stop path (`Checkpointer.stop`), which writes the checkpoint of the last
completed step, closes the logs and raises `RunStopped` with the line that says how to resume."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

from grpo_cli.errors import UserError


class RunStopped(UserError):
    """The run stopped early after writing a checkpoint; the message says why and how to resume."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class StopReason:
    """Why the run stops after this step: one line, and the exit code of the process."""

    message: str
    exit_code: int = 1


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


def stop_reason(signals: StopSignals, guard, rewards) -> StopReason | None:
    """Why the run must stop now, or None: a signal, NaN/Inf steps (`guard`, the learner's
    BadStepGuard), a reward that keeps failing (`rewards.failing`)."""
    if signals.received:
        return StopReason(f"{signals.received} received", signals.exit_code)
    if guard.exhausted:
        return StopReason(f"{int(guard.in_a_row)} optimiser steps in a row had NaN/Inf gradients "
                          f"(train.max_bad_steps={guard.max_bad})")
    if rewards.failing:
        return StopReason(rewards.failing)
    return None
