"""Checkpoints that `AutoModelForCausalLM.from_pretrained` and `vllm.LLM(model=...)` both load.

With LoRA the checkpoint is the adapter (peft's `PeftModel.from_pretrained(base, dir)` loads it),
plus, with `merged=True` (checkpoint.merged), the merged model in `dir/merged`.
"""

from __future__ import annotations

import copy
from pathlib import Path

from peft import PeftModel


def save_checkpoint(policy, tokenizer, directory: Path, merged: bool = False, weights: dict | None = None) -> Path:
    """`weights`: the full state dict to write instead of the policy's own (fsdp2 shards those)."""
    directory.mkdir(parents=True, exist_ok=True)
    policy.config.use_cache = True  # a checkpoint is for inference; training turned the cache off
    policy.save_pretrained(directory, safe_serialization=True, state_dict=weights)
    policy.config.use_cache = False
    tokenizer.save_pretrained(directory)
    if merged and isinstance(policy, PeftModel):
        save_merged(policy, directory / "merged")
        tokenizer.save_pretrained(directory / "merged")
    return directory


def save_merged(peft_model: PeftModel, directory: Path) -> Path:
    """A plain transformers checkpoint of base + adapter (a copy is merged; training goes on)."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(directory, safe_serialization=True)
    return directory
