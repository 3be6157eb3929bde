"""A `multiply` tool that fails in both ways a tool can (tests only): named as the one the warm-started
test model calls, so its prompt is the one it learned."""

from __future__ import annotations

import time


def multiply(a: int, b: int) -> int:
    """
    Multiplies two integers, when it feels like it.

    Args:
        a: The first factor.
        b: The second factor.
    """
    if a % 2:
        raise RuntimeError("the multiplier is down")
    time.sleep(3)  # past tools.timeout_s
    return a * b
