"""Loading the tokenizer and causal LMs from a hub id or a local `save_pretrained` directory."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_cli.errors import UserError
from grpo_cli.hub import use_cache_if_offline

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(UserError):
    pass


def _hub_error(key: str, name: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{key}={name!r}: could not load ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
        f"offline or a typo? pass {key}=/path/to/a/save_pretrained/dir"
    )


def _use_cache_if_offline(name: str) -> None:
    if not Path(name).expanduser().exists():
        use_cache_if_offline()


def load_tokenizer(cfg: DictConfig):
    name = cfg.tokenizer or cfg.path
    _use_cache_if_offline(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except Exception as err:
        raise _hub_error("model.tokenizer" if cfg.tokenizer else "model.path", name, err) from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is always masked; any id will do
    return tok


def resolve_device(name: str) -> torch.device:
    """`train.device`: `auto` is CUDA when available, else the CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device={name!r} is invalid: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name!r}: CUDA is not available on this machine (use auto or cpu)")
    return device


def load_causal_lm(cfg: DictConfig, dtype: str, trainable: bool, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The model on `device`; CUDA weights load straight onto the GPU, never staged in host memory."""
    _use_cache_if_offline(cfg.path)
    device = torch.device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.path,
            dtype=DTYPES[dtype],
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=cfg.trust_remote_code,
            device_map={"": device} if device.type == "cuda" else None,
        )
    except Exception as err:
        raise _hub_error("model.path", cfg.path, err) from err
    model.to(device)  # a no-op on CUDA; the CPU or (in tests) the shapes-only `meta` device otherwise
    model.config.use_cache = False  # training forwards never decode
    if trainable:
        model.train()
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
    else:
        model.eval().requires_grad_(False)
    return model
