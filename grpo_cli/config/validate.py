"""The config: the typed schema registered with Hydra, and the checks that types cannot say.

Each group of `conf/` (model, data, reward, sampler, optim, algo, logger) merges onto one of these
dataclasses, so Hydra/OmegaConf reject unknown keys and wrong types. Ranges that types cannot say
(`algo.group_size >= 2`, ...) are checked by `validate`, which runs as a Hydra callback before
Hydra creates the run directory, so a bad value leaves nothing on disk.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import typing
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from grpo_cli.config.schema import (  # noqa: F401  (the schema, importable from here as before)
    AlgoConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    EvalConfig,
    LoggerConfig,
    LoraSettings,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    RewardSpec,
    SamplerConfig,
    TrainConfig,
    reward_spec,
)
from grpo_cli.errors import ConfigError
from grpo_cli.parallel.env import check_split, shared_gpu, torchrun_place, world_size


def register_configs() -> None:
    ConfigStore.instance().store(name="grpo_schema", node=Config)


_DTYPES = ("float32", "bfloat16", "float16")
_WANDB_MODES = ("auto", "online", "offline", "disabled")
# A hub id is `name` or `org/name`; anything else that does not exist on disk is a missing path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _check_source(key: str, value: str | None) -> None:
    if value is None or Path(value).expanduser().exists():
        return
    _check(bool(_HUB_ID.match(value)), key, value, "no such file or directory (and not a hub id)")


def _check_component(key: str, node: Any) -> None:
    """A `_target_` node must instantiate; its own error (unknown class, bad argument) is the message."""
    from hydra.utils import instantiate

    try:
        instantiate(node)
    except Exception as err:
        cause = err.__cause__ or err  # Hydra wraps the class's own error
        msg = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"{key}={OmegaConf.to_container(node, resolve=True)} is invalid: {msg}") from None


def _check_target(key: str, node: Any) -> None:
    """A `_target_` must import: say so now, not as an instantiate traceback after the engine started."""
    from hydra.utils import get_object

    target = node.get("_target_") if isinstance(node, DictConfig) else None
    _check(target is not None, f"{key}._target_", target, "is required (a dotted path to a class)")
    try:
        get_object(target)
    except Exception as err:
        msg = (str(err.__cause__ or err).splitlines() or [""])[0][:160]
        _check(False, f"{key}._target_", target, f"cannot be imported ({msg})")


def _schema_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key the schema knows, e.g. `train.max_steps` (open dicts end their branch)."""
    keys = []
    for name, hint in typing.get_type_hints(schema).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(hint):
            keys += _schema_keys(hint, f"{prefix}{name}.")
    return keys


def unknown_key_message(full: str, siblings: list[str] | None = None) -> str:
    """`train.max_step is not a config key: did you mean train.max_steps?` (the closest keys beside
    it first, then anywhere: `max_steps` -> train.max_steps)."""
    prefix, _, key = full.rpartition(".")
    prefix = prefix + "." if prefix else ""
    if siblings is None:
        known = _schema_keys(Config)
        siblings = [k[len(prefix):] for k in known if k.startswith(prefix) and "." not in k[len(prefix):]]
    close = [prefix + k for k in difflib.get_close_matches(key, siblings, n=3, cutoff=0.6)] or [
        k for k in _schema_keys(Config) if difflib.get_close_matches(key, [k.rsplit(".", 1)[-1]], cutoff=0.75)][:3]
    near = f"did you mean {' or '.join(close)}?" if close else f"the keys of {prefix[:-1] or 'the config'} are {', '.join(siblings)}"
    return f"{full} is not a config key: {near}"


def _check_known_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Refuse a key the schema does not know, however it got there (`+train.max_step=2` passes
    Hydra's own check): a typo would otherwise be silently ignored. Open dicts (`reward.funcs`'
    names, `engine_kwargs`, the kwargs of `_target_` nodes) stay open; each reward is a RewardSpec."""
    hints = typing.get_type_hints(schema)
    for key in node:
        if not prefix and key == "hydra":
            continue
        full = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(unknown_key_message(full, list(hints)))
        value = node._get_node(key)
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, DictConfig):
            _check_known_keys(value, hints[key], full + ".")
        elif full == "reward.funcs" and isinstance(value, DictConfig):
            for name, entry in value.items():
                if isinstance(entry, DictConfig):
                    _check_known_keys(entry, RewardSpec, f"{full}.{name}.")


def _check_callable(key: str, path: str) -> None:
    """A reward named by dotted path must import: a typo is one line naming what the module has."""
    import importlib

    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except Exception as err:
        _check(False, key, path, f"cannot import {module_name} ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
               + ("; a module in this directory needs PYTHONPATH=." if isinstance(err, ModuleNotFoundError) else ""))
    _check(module is not None, key, path, "must be a dotted path, module.function")
    if not callable(getattr(module, attr, None)):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attr, names, n=3)
        _check(False, key, path, f"{module_name} has no {attr}" + (
            f"; did you mean {' or '.join(f'{module_name}.{c}' for c in close)}?" if close else f"; it has {', '.join(names)}"))


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on an unknown key, a missing mandatory value or the first out-of-range value."""
    _check_known_keys(cfg, Config)
    # Only our own nodes: hydra.* holds interpolations that resolve only inside a job.
    missing = sorted(m for k, v in cfg.items() if k != "hydra" and isinstance(v, DictConfig)
                     for m in OmegaConf.missing_keys(v))
    if missing:
        raise ConfigError(f"{missing[0]} is required (it has no default): add {missing[0]}=... to the command")
    a, s, o, t = cfg.algo, cfg.sampler, cfg.optim, cfg.train
    _check(a.group_size >= 2, "algo.group_size", a.group_size, "must be >= 2 (advantages compare completions within a group)")
    _check(a.beta >= 0, "algo.beta", a.beta, "must be >= 0")
    _check(0 < a.epsilon < 1, "algo.epsilon", a.epsilon, "must be in (0, 1)")
    if a.epsilon_high is not None:
        _check(a.epsilon_high >= a.epsilon, "algo.epsilon_high", a.epsilon_high, f"must be >= algo.epsilon ({a.epsilon})")
    _check(a.num_iterations >= 1, "algo.num_iterations", a.num_iterations, "must be >= 1")
    _check(a.adv_eps >= 0, "algo.adv_eps", a.adv_eps, "must be >= 0")
    _check(a.scale_rewards in ("group", "batch", "none"), "algo.scale_rewards", a.scale_rewards,
           "must be one of group, batch, none")
    _check(a.adv_std_ddof in (0, 1), "algo.adv_std_ddof", a.adv_std_ddof, "must be 0 (population std) or 1 (Bessel's, TRL's)")
    _check(a.reward_aggregation in ("sum_then_normalize", "normalize_then_sum"), "algo.reward_aggregation",
           a.reward_aggregation, "must be sum_then_normalize or normalize_then_sum")
    if a.entropy_target is not None:
        _check(0 <= a.entropy_coef_min <= a.entropy_coef_max, "algo.entropy_coef_min", a.entropy_coef_min,
               f"must be in [0, algo.entropy_coef_max ({a.entropy_coef_max})]")
        _check(a.entropy_coef_delta > 0, "algo.entropy_coef_delta", a.entropy_coef_delta, "must be > 0")
    for key in ("objective", "kl", "is_correction"):
        _check_component(f"algo.{key}", a[key])
    _check(a.kl_action in ("warn", "stop", "adapt"), "algo.kl_action", a.kl_action, "must be one of warn, stop, adapt")
    if a.kl_limit is not None:
        _check(a.kl_limit > 0, "algo.kl_limit", a.kl_limit, "must be > 0 or null")
        _check(a.beta > 0, "algo.kl_limit", a.kl_limit, "needs algo.beta > 0 (the KL is measured against the reference beta loads)")
    _check(a.kl_horizon > 0, "algo.kl_horizon", a.kl_horizon, "must be > 0")
    _check(a.ref_refresh_every >= 0, "algo.ref_refresh_every", a.ref_refresh_every, "must be >= 0 (0 = frozen reference)")
    if a.ref_refresh_every:
        _check(a.beta > 0, "algo.ref_refresh_every", a.ref_refresh_every, "needs algo.beta > 0 (with beta = 0 there is no reference)")
    draws = a.batch_filter.get("max_extra_draws")
    if draws is not None:
        _check(isinstance(draws, int) and draws >= 0, "algo.batch_filter.max_extra_draws", draws, "must be an integer >= 0")
    _check(0 < a.ref_refresh_alpha <= 1, "algo.ref_refresh_alpha", a.ref_refresh_alpha, "must be in (0, 1]")
    _check(cfg.model.lora.r >= 0, "model.lora.r", cfg.model.lora.r, "must be >= 0 (0 = no adapters)")
    _check(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    _check(o.max_grad_norm >= 0, "optim.max_grad_norm", o.max_grad_norm, "must be >= 0 (0 disables clipping)")
    _check(s.max_tokens > 0, "sampler.max_tokens", s.max_tokens, "must be > 0")
    _check(s.temperature > 0, "sampler.temperature", s.temperature, "must be > 0")
    _check(0 < s.top_p <= 1, "sampler.top_p", s.top_p, "must be in (0, 1]")
    _check(s.top_k >= 0, "sampler.top_k", s.top_k, "must be >= 0 (0 disables)")
    _check(s.sleep_level in (0, 1, 2), "sampler.sleep_level", s.sleep_level, "must be 0 (off), 1 or 2")
    _check(s.kind in ("colocated", "server"), "sampler.kind", s.kind, "must be colocated or server")
    _check(s.weight_sync in ("auto", "nccl", "shm"), "sampler.weight_sync", s.weight_sync, "must be auto, nccl or shm")
    _check(not s.url or s.url.startswith(("http://", "https://")), "sampler.url", s.url,
           "must start with http:// or https:// (empty starts a server)")
    _check(s.startup_timeout_s > 0, "sampler.startup_timeout_s", s.startup_timeout_s, "must be > 0")
    _check(s.request_timeout_s > 0, "sampler.request_timeout_s", s.request_timeout_s, "must be > 0")
    _check(s.tensor_parallel_size >= 1, "sampler.tensor_parallel_size", s.tensor_parallel_size, "must be >= 1")
    if s.kind == "server":
        _check(s.sleep_level == 0, "sampler.sleep_level", s.sleep_level, "must be 0 with sampler.kind=server (it has its own devices)")
        if not s.url:  # a server grpo-cli starts: on its own GPUs, or on a share of the learner's that leaves it room
            gpu = shared_gpu(s.devices, s.tensor_parallel_size, t.device)
            _check(gpu is None or s.gpu_memory_utilization <= 0.5, "sampler.devices", s.devices,
                   f"the vLLM server would take sampler.gpu_memory_utilization={s.gpu_memory_utilization} of GPU {gpu}, "
                   f"the learner's (train.device={t.device}): give it its own, e.g. sampler.devices=1, "
                   "or share with sampler.gpu_memory_utilization=0.3")
    else:  # vLLM would pick its multiprocess executor (which cannot take our weight iterator) or, under
        # torchrun, make the ranks of a TP group share prompts and seed, which ours do not
        _check(s.tensor_parallel_size == 1, "sampler.tensor_parallel_size", s.tensor_parallel_size,
               "must be 1 with the colocated sampler (one unsharded engine per learner rank): to shard the engine, "
               "use the server sampler: sampler=vllm-server sampler.devices=\"'1,2'\" sampler.tensor_parallel_size=2")
    tl = cfg.tools
    _check(tl.max_turns >= 0, "tools.max_turns", tl.max_turns, "must be >= 0")
    _check(tl.timeout_s > 0, "tools.timeout_s", tl.timeout_s, "must be > 0")
    _check(tl.max_workers >= 1, "tools.max_workers", tl.max_workers, "must be >= 1")
    _check_component("tools.parser", tl.parser)
    _check(a.max_staleness >= 0, "algo.max_staleness", a.max_staleness, "must be >= 0 (0 = on-policy)")
    if a.max_staleness:
        _check(s.kind == "server", "algo.max_staleness", a.max_staleness,
               "needs sampler.kind=server (sampler=vllm-server): the colocated engine shares the learner's device, so nothing overlaps")
    _check(t.logprob_chunk_mib >= 1, "train.logprob_chunk_mib", t.logprob_chunk_mib, "must be >= 1")
    _check(0 < s.gpu_memory_utilization <= 1, "sampler.gpu_memory_utilization", s.gpu_memory_utilization, "must be in (0, 1]")
    _check(s.max_model_len > s.max_tokens, "sampler.max_model_len", s.max_model_len, f"must exceed sampler.max_tokens ({s.max_tokens})")
    _check(t.prompts_per_step >= 1, "train.prompts_per_step", t.prompts_per_step, "must be >= 1")
    _check(t.micro_batch_size >= 1, "train.micro_batch_size", t.micro_batch_size, "must be >= 1")
    if t.optim_batch_size is not None:
        _check(t.optim_batch_size >= 1, "train.optim_batch_size", t.optim_batch_size, "must be >= 1 or null")
    _check(t.max_steps >= 0, "train.max_steps", t.max_steps, "must be >= 0")
    _check(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
    _check(t.max_bad_steps >= 0, "train.max_bad_steps", t.max_bad_steps, "must be >= 0 (0 never stops)")
    _check(t.nproc >= 1, "train.nproc", t.nproc, "must be >= 1")
    _check(t.strategy in ("ddp", "fsdp2"), "train.strategy", t.strategy, "must be ddp or fsdp2")
    if t.strategy == "fsdp2":
        _check(not cfg.model.lora.r, "train.strategy", t.strategy,
               "fsdp2 does not shard LoRA adapters yet (model.lora.r > 0): use train.strategy=ddp with LoRA")
        _check(not t.compile, "train.strategy", t.strategy,
               "fsdp2 with train.compile=true is not supported yet: set one of them off")
    _check(t.dist_timeout_s > 0, "train.dist_timeout_s", t.dist_timeout_s, "must be > 0 seconds")
    check_split(t.prompts_per_step, world_size(t.nproc), t.optim_batch_size)
    _check(cfg.checkpoint.keep_last >= 0, "checkpoint.keep_last", cfg.checkpoint.keep_last, "must be >= 0 (0 keeps all)")
    _check(cfg.reward.max_failures_in_a_row >= 0, "reward.max_failures_in_a_row", cfg.reward.max_failures_in_a_row, "must be >= 0 (0 never stops)")
    _check_target("optim.optimizer", o.optimizer)
    _check_target("algo.aggregation", a.aggregation)
    if cfg.resume not in (None, "auto"):
        from grpo_cli.state.checkpoint import check_resume_dir

        check_resume_dir(cfg.resume)
    for key, value in (("model.dtype", cfg.model.dtype), ("sampler.dtype", s.dtype)):
        _check(value in _DTYPES, key, value, f"must be one of {', '.join(_DTYPES)}")
    if t.autocast_dtype is not None:
        _check(t.autocast_dtype in _DTYPES[1:], "train.autocast_dtype", t.autocast_dtype, "must be bfloat16, float16 or null")
    _check(cfg.logger.wandb_mode in _WANDB_MODES, "logger.wandb_mode", cfg.logger.wandb_mode, f"must be one of {', '.join(_WANDB_MODES)}")
    _check(cfg.eval.pass_k >= 0, "eval.pass_k", cfg.eval.pass_k, "must be >= 0")
    _check(len(cfg.reward.funcs) > 0, "reward.funcs", "{}", "needs at least one reward")
    for name, entry in cfg.reward.funcs.items():
        spec = reward_spec(name, entry)
        if isinstance(spec.fn, str):
            _check_callable(f"reward.funcs.{name}.fn", spec.fn)
        else:
            _check_target(f"reward.funcs.{name}.fn", spec.fn)
    if cfg.reward.accuracy is not None:
        _check(cfg.reward.accuracy in cfg.reward.funcs, "reward.accuracy", cfg.reward.accuracy, f"must name one of reward.funcs: {', '.join(cfg.reward.funcs)}")
    _check_source("model.path", cfg.model.path)
    _check_source("model.tokenizer", cfg.model.tokenizer)
    _check_source("data.path", cfg.data.path)
    _check_source("data.eval_path", cfg.data.eval_path)


def exit_on_config_error(cfg: DictConfig) -> None:
    """Validate, and on a bad value print one line and exit 2 (no traceback, nothing written).

    Under torchrun every rank composes the same config and fails the same way: rank 0 says so."""
    try:
        validate(cfg)
    except Exception as err:
        if not isinstance(err, ConfigError):  # e.g. an interpolation that cannot resolve: still one line
            err = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        if torchrun_place()[0] == 0:
            print(f"grpo-train: config error: {err}", file=sys.stderr)
        sys.exit(2)


class ValidateConfig(Callback):
    """Hydra callback: validates before Hydra creates the run directory (single runs).

    Hydra turns an exception raised in a callback into a warning and carries on, so this exits.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_on_config_error(config)


def compose(overrides: list[str]) -> DictConfig:
    """The config `grpo-train OVERRIDES` would run, composed in-process (tests, scripts)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from grpo_cli.config.paths import config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)
