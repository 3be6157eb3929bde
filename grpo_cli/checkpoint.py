"""Checkpoints that `AutoModelForCausalLM.from_pretrained` and `vllm.LLM(model=...)` both load."""

from __future__ import annotations

from pathlib import Path


def save_checkpoint(policy, tokenizer, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    policy.config.use_cache = True  # a checkpoint is for inference; training turned the cache off
    policy.save_pretrained(directory, safe_serialization=True)
    policy.config.use_cache = False
    tokenizer.save_pretrained(directory)
    return directory
