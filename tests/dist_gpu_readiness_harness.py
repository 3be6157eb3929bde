"""One rank of a 2-process gloo world on this CPU, for the GPU-readiness tests (tests only).

    RANK=r WORLD_SIZE=2 LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=P \
        python tests/dist_gpu_readiness_harness.py CASE OUT OVERRIDES_JSON

Each rank writes OUT/rank{R}.json: what every call it drove returned, or the error it raised.

    cuda_group    `distributed.init` as on a CUDA machine, with gloo standing in for NCCL and serving
                  only the devices NCCL serves (CUDA): then every call that takes a CPU tensor
                  (Dist.any, Dist.steps, Dist.sum/max as the loop calls them, FullyShard.align, a
                  whole ddp train_step) must still work.
    local_error   a "cuda:gloo" group and `Dist.any`: an error of this rank, no peer involved.
    peer_died     rank 1 leaves after joining; rank 0's next collective meets a dead peer.
    full_weights  an fsdp2 learner's `weights()`: how many gathered tensors are alive at each
                  yield, how many gathers ran, whether the tied names share one tensor.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import weakref
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from grpo_cli.config.validate import compose
from grpo_cli.parallel import dist as distributed


def as_gloo(backend: str) -> str:
    """The gloo group that serves exactly the devices `backend` serves: "nccl" -> "cuda:gloo",
    "cpu:gloo,cuda:nccl" -> "cpu:gloo,cuda:gloo" (torch's own table of what each backend serves)."""
    if ":" not in backend:
        return ",".join(f"{device}:gloo" for device in dist.Backend.backend_capability[backend])
    return ",".join(f"{pair.split(':')[0]}:gloo" for pair in backend.split(","))


def init_as_on_cuda(timeout_s: float) -> tuple[distributed.Dist, str]:
    """`distributed.init` on a pretend CUDA machine: its group, with gloo for NCCL (see as_gloo)."""
    chosen = []
    real = (torch.cuda.is_available, torch.cuda.set_device, dist.init_process_group)

    def init_process_group(backend, **kwargs):
        chosen.append(backend)
        return real[2](as_gloo(backend), **kwargs)

    torch.cuda.is_available, torch.cuda.set_device, dist.init_process_group = (lambda: True), (lambda i: None), init_process_group
    try:
        me = distributed.init(timeout_s, "auto")
    finally:
        torch.cuda.is_available, torch.cuda.set_device, dist.init_process_group = real
    return me, chosen[0]


def attempt(results: dict, key: str, fn) -> None:
    try:
        results[key] = {"ok": fn()}
    except Exception as err:  # noqa: BLE001  the test reads which call failed, and how
        results[key] = {"error": type(err).__name__, "message": str(err).strip().splitlines()[0][:300]}


def cuda_group(overrides: list[str]) -> dict:
    from grpo_cli.parallel.sharding import FullyShard
    from tests.conftest import make_learner
    from tests.dist_learner_harness import recorded_batch, share

    me, backend = init_as_on_cuda(60)
    out = {"backend": backend, "gloo_stand_in": as_gloo(backend)}
    attempt(out, "Dist.any", lambda: me.any(me.rank == 1))
    attempt(out, "Dist.steps", lambda: len(me.steps([torch.arange(2)] * (me.rank + 1))))
    attempt(out, "Dist.max (train.py reward errors)", lambda: int(me.max(torch.tensor(me.rank + 3))))
    attempt(out, "Dist.sum (train.py groups drawn)", lambda: int(me.sum(torch.tensor(me.rank + 1))))
    attempt(out, "FullyShard.align", lambda: len(FullyShard(me, torch.device("cpu")).align([1] * (me.rank + 1))))
    cfg = compose(overrides + ["train.device=cpu", "train.strategy=ddp"])
    learner = make_learner(cfg, total_optim_steps=10, dist=me)
    batch = share(recorded_batch(), me)
    attempt(out, "Learner.train_step", lambda: float(learner.train_step(batch)["loss"]))
    attempt(out, "Learner.tokens summed", lambda: learner.tokens.tolist())
    return out


def local_error(overrides: list[str]) -> dict:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, rank == 0,
                          timeout=timedelta(seconds=60))
    # serves CUDA tensors only, as NCCL does
    dist.init_process_group("cuda:gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    out: dict = {}
    attempt(out, "Dist.any", lambda: distributed.from_env().any(True))
    # The error is local, so a rank gets here at once: rank 0 (the store's host) must not leave
    # before rank 1 has finished joining the group, or rank 1's join fails (connection reset).
    store.add("left", 1)
    while rank == 0 and store.add("left", 0) < world:
        time.sleep(0.05)
    return out


def peer_died(overrides: list[str]) -> dict:
    me = distributed.init(20)
    me.barrier()
    if me.rank == 1:
        os._exit(0)
    time.sleep(1.0)  # rank 1 is gone
    out: dict = {}
    attempt(out, "Dist.any", lambda: me.any(True))
    return out


def full_weights(overrides: list[str]) -> dict:
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from tests.conftest import make_learner

    me = distributed.init(60)
    cfg = compose(overrides + ["train.device=cpu", "train.strategy=fsdp2"])
    learner = make_learner(cfg, total_optim_steps=10, dist=me)
    gathers = []
    real = DTensor.full_tensor

    def counted(self, *args, **kwargs):
        gathers.append(list(self.shape))
        return real(self, *args, **kwargs)

    DTensor.full_tensor = counted
    seen: dict[str, weakref.ref] = {}
    most_alive, tied_same, gathered = 0, None, {}
    try:
        for name, tensor in learner.weights():
            # full tensors of earlier names still alive now (the same object under a tied name aside)
            alive = {id(ref()) for ref in seen.values()} - {id(None), id(tensor)}  # no reference kept here
            most_alive = max(most_alive, len(alive))
            if name == "lm_head.weight":  # tied to the embeddings in the tiny model
                embedding = seen.get("model.embed_tokens.weight")
                tied_same = embedding is not None and embedding() is tensor
            seen[name] = weakref.ref(tensor)
            gathered[name] = tensor.clone()
    finally:
        DTensor.full_tensor = real
    loaded = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32).state_dict()
    return {"names": list(seen), "loaded_names": list(loaded), "most_alive": most_alive, "gathers": gathers,
            "tied_same_tensor": tied_same, "parameters": len(list(learner.policy.parameters())),
            "max_diff_to_checkpoint": max((gathered[k].float() - v).abs().max().item() for k, v in loaded.items())}


CASES = {"cuda_group": cuda_group, "local_error": local_error, "peer_died": peer_died, "full_weights": full_weights}


if __name__ == "__main__":
    case, out_dir, overrides = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    try:
        result = CASES[case](overrides)
    except Exception:  # noqa: BLE001
        result = {"crashed": traceback.format_exc()[-3000:]}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{os.environ['RANK']}.json").write_text(json.dumps(result, indent=1))
    os._exit(0)  # no group tear-down: a case may leave a broken group behind on purpose
