"""LoRA adapters (peft): the learner trains adapters only; the sampler and checkpoints get merged weights.

`model.lora.r > 0` injects LoRA layers into the policy in place (peft's `get_peft_model`), so the
learner's forward is unchanged and only the adapters require grad. vLLM's `reload_weights` wants
the base model's parameter names, so `merged_weights` yields `W + (alpha / r) * B @ A` under the
name of `W`, computed on the fly: the base weights are never modified (no merge / unmerge
round-off accumulating over a run).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

ADAPTER = "default"


def apply_lora(model: torch.nn.Module, settings) -> PeftModel:
    """Adapters into `model` (in place); returns the PeftModel that saves them."""
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    if getattr(model, "is_gradient_checkpointing", False):
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad input
    return peft_model


@torch.no_grad()
def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's state dict as the base model names it, with each adapter merged into its weight."""
    deltas = {name: m.get_delta_weight(ADAPTER) for name, m in model.named_modules()
              if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}
    for key, tensor in model.state_dict().items():
        if ".lora_" in key:
            continue  # the adapters themselves
        module, sep, param = key.partition(".base_layer.")
        if sep:
            key = f"{module}.{param}"
            if param == "weight":
                tensor = tensor + deltas[module].to(tensor.dtype)
        yield key, tensor.detach()
