"""A `train.callbacks` entry for crash tests: GRPO_CLI_TEST_PAUSE=EVENT@STEP prints a marker and
sleeps there (GRPO_CLI_TEST_PAUSE_S seconds), so a test can kill the process at a known point."""

from __future__ import annotations

import os
import sys
import time

CALLBACK = "train.callbacks=[tests.pause.pause]"


def pause(event: str, step: int) -> None:
    want = os.environ.get("GRPO_CLI_TEST_PAUSE")
    if want and want == f"{event}@{step}":
        print(f"[grpo-cli test] paused at {event}@{step}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("GRPO_CLI_TEST_PAUSE_S", "60")))
