"""Loading the tokenizer and causal LMs from a hub id or a local `save_pretrained` directory."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_cli.devices import DTYPES
from grpo_cli.errors import UserError
from grpo_cli.hub import use_cache_if_offline


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


def check_model(cfg: DictConfig, max_model_len: int, max_tokens: int) -> None:
    """Before any engine starts: `model.path` is a causal LM whose context fits the sampler's lengths."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    local = Path(cfg.path).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        if (local / "adapter_config.json").is_file():  # a LoRA run's checkpoint: the adapter alone
            raise ModelLoadError(f"model.path={cfg.path!r} is a LoRA adapter, not a whole model: "
                                 + (f"use its merged model, model.path={local / 'merged'}" if (local / "merged" / "config.json").is_file()
                                    else "save checkpoints with checkpoint.merged=true and use DIR/merged"))
        raise ModelLoadError(f"model.path={cfg.path!r} is not a model checkpoint (no config.json); "
                             "pass a save_pretrained directory or a hub id")
    _use_cache_if_offline(cfg.path)
    try:
        config = AutoConfig.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
    except Exception as err:
        if "trust_remote_code" in str(err):
            raise ModelLoadError(f"model.path={cfg.path!r} needs its own code to run; set "
                                 "model.trust_remote_code=true only if you trust it") from err
        raise _hub_error("model.path", cfg.path, err) from err
    custom = bool(getattr(config, "auto_map", None)) and cfg.trust_remote_code
    if not custom and type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelLoadError(f"model.path={cfg.path!r} is a {config.model_type!r} model, not a causal LM "
                             "(AutoModelForCausalLM cannot load it)")
    context = getattr(config.get_text_config(), "max_position_embeddings", None)
    if context:
        if max_tokens >= context:
            raise ModelLoadError(f"sampler.max_tokens={max_tokens} is invalid: the model's context is {context} "
                                 "tokens (max_position_embeddings), prompt included")
        if max_model_len > context:
            raise ModelLoadError(f"sampler.max_model_len={max_model_len} is invalid: the model's context is "
                                 f"{context} tokens (max_position_embeddings)")


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
