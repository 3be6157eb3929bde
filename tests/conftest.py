"""Shared fixtures. Engine-backed fixtures are session-scoped: one vLLM engine for the suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# vLLM must run its engine in this process (the learner pushes weights into it), and W&B must
# never try the network from a test.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
