"""Where this process stands, as its environment says: its place among torchrun's ranks, the GPUs
it sees. Config validation reads it before the heavy imports, so torch is imported only where needed."""

from __future__ import annotations

import os

from grpo_cli.errors import ConfigError


def torchrun_place() -> tuple[int, int, int]:
    """(rank, world size, rank on this node): RANK, WORLD_SIZE, LOCAL_RANK; (0, 1, 0) without torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def shared_gpu(devices: str | None, tensor_parallel_size: int, learner_device: str) -> str | None:
    """The GPU a server grpo-cli starts would share with the learner, or None.

    The server's GPUs are `devices` (its CUDA_VISIBLE_DEVICES) or, when null, the first
    `tensor_parallel_size` of the learner's visible GPUs; the learner's `cuda:N` is the N-th visible one."""
    import torch  # only here: config validation runs before the heavy imports

    if learner_device == "auto":
        learner_device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(learner_device)
    except RuntimeError:  # resolve_device says what is wrong with it
        return None
    if device.type != "cuda":
        return None
    index = device.index or 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = ([x.strip() for x in visible.split(",")] if visible is not None
           else [str(i) for i in range(max(index + 1, tensor_parallel_size))])
    learner = ids[index] if index < len(ids) else str(index)
    server = [x.strip() for x in str(devices).split(",")] if devices is not None else ids[:tensor_parallel_size]
    return learner if learner in server else None


def check_split(prompts_per_step: int, world: int, optim_batch_size: int | None) -> None:
    """B prompts must split into whole groups per rank; raises ConfigError naming the key."""
    if world > 1 and prompts_per_step % world:
        raise ConfigError(f"train.prompts_per_step={prompts_per_step} is invalid: must divide by the "
                          f"{world} processes (train.nproc / torchrun --nproc-per-node), so each rank "
                          "samples whole groups")
    if world > 1 and optim_batch_size is not None and optim_batch_size % world:
        raise ConfigError(f"train.optim_batch_size={optim_batch_size} is invalid: must divide by the "
                          f"{world} processes, each rank taking optim_batch_size / N completions per optimiser step")


def world_size(nproc: int) -> int:
    """The processes a run will have: torchrun's WORLD_SIZE inside a launched rank, else train.nproc."""
    return torchrun_place()[1] if "WORLD_SIZE" in os.environ else nproc


# --- launching ------------------------------------------------------------------------------------
