"""Data parallelism on torch.distributed: N processes (one per GPU, or N CPU processes), each with
its own colocated vLLM engine and a replica of the learner.

    torchrun --nproc-per-node N -m grpo_cli +recipe=...      # or: grpo-train train.nproc=N ...

What is split: the B prompts of a step, B / N per rank in whole groups (advantages stay local).
What each rank holds: the policy (and reference, optimiser state) in full (train.strategy=ddp) or
1/N of them (fsdp2, grpo_cli/parallel/sharding.py), its own vLLM engine
seeded `sampler.seed + rank`, its own data stream position and RNGs. What crosses ranks: the rows
of the loss mask an aggregation normalises by (so the loss is the one-process loss of the global
batch), the gradients (summed), the step's metrics (rank 0 logs global values) and the decision
to stop. Rank 0 alone writes metrics, W&B, TensorBoard and the model; every rank writes its RNGs
into the checkpoint.

With one process (no torchrun) every helper here is the identity and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from grpo_cli.errors import UserError
from grpo_cli.parallel.env import torchrun_place


class DistributedError(UserError):
    """A rank failed or a collective timed out."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the world: rank, world size, and the rank on this node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs and writes the model."""
        return self.rank == 0

    # --- reductions (the identity in a world of one) --------------------------------------------

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of `x` over ranks (a new tensor; `x` is left alone)."""
        return self._reduce(x, dist.ReduceOp.SUM)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        """Max of `x` over ranks (a new tensor; `x` is left alone)."""
        return self._reduce(x, dist.ReduceOp.MAX)

    def _reduce(self, x: torch.Tensor, op) -> torch.Tensor:
        if self.world == 1:
            return x
        x = x.detach().clone()
        _call(dist.all_reduce, x, op=op)
        return x

    def gather(self, obj) -> list:
        """Every rank's `obj` (picklable), in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        _call(dist.all_gather_object, out, obj)
        return out

    def cat(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-d `x` concatenated in rank order (lengths may differ): [sum of n_r]."""
        if self.world == 1:
            return x
        return torch.cat([t.to(x.device) for t in self.gather(x.detach().cpu())])

    def mean(self, values: dict[str, float], n: int) -> dict[str, float]:
        """Means over each rank's `n` rows (e.g. its share of the eval set), joined weighted by n."""
        if self.world == 1:
            return values
        parts = [(v, k) for v, k in self.gather((values, n)) if k]
        total = sum(k for _, k in parts)
        return {key: sum(v[key] * k for v, k in parts) / total for key in (parts[0][0] if parts else {})}

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        _call(dist.broadcast_object_list, box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            _call(dist.barrier)

    # --- the learner's hooks ---------------------------------------------------------------------

    def global_weights(self, aggregation, mask: torch.Tensor) -> torch.Tensor:
        """This rank's rows of `aggregation.weights` computed over every rank's rows of the optimiser
        batch: mask [n, T] -> [n, T]. Any aggregation (sequence mean, token mean, a constant) then
        normalises by the global counts, so summed gradients equal the one-process gradient."""
        if self.world == 1:
            return aggregation.weights(mask)
        sizes = torch.tensor(mask.shape, dtype=torch.long)  # [2]: rows, columns of this rank
        all_sizes = torch.stack([torch.as_tensor(s) for s in self.gather(sizes)])  # [world, 2]
        n_max, t_max = (int(v) for v in all_sizes.max(0).values)
        padded = torch.zeros(n_max, t_max, dtype=mask.dtype, device=mask.device)  # [n_max, T_max]
        padded[: mask.shape[0], : mask.shape[1]] = mask
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        _call(dist.all_gather, parts, padded)
        rows = [p[: int(n)] for p, (n, _) in zip(parts, all_sizes)]  # each rank's rows, [n_r, T_max]
        weights = aggregation.weights(torch.cat(rows))  # [sum n_r, T_max]
        start = int(all_sizes[: self.rank, 0].sum())
        return weights[start : start + mask.shape[0], : mask.shape[1]]  # [n, T]

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every gradient over ranks, in one flat buffer (a rank without rows sends zeros).

        Each rank's loss is already its share of the global loss (global_weights), so the sum is
        the one-process gradient; clipping afterwards sees the global norm on every rank.
        """
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])  # [total parameters]
        _call(dist.all_reduce, flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def reduce_stats(self, stats):
        """A LossStats (token count, sums, maxes) over every rank: counts and sums add, maxes max."""
        if self.world == 1:
            return stats
        device = torch.as_tensor(stats.tokens).device
        host = lambda d: {k: v.detach().cpu() for k, v in d.items()}  # noqa: E731
        out = type(stats)()
        for tokens, sums, maxes in self.gather((torch.as_tensor(stats.tokens).cpu(), host(stats.sums), host(stats.maxes))):
            out.add(type(stats)(tokens, sums, maxes))
        out.tokens = torch.as_tensor(out.tokens).to(device)
        out.sums = {k: v.to(device) for k, v in out.sums.items()}
        out.maxes = {k: v.to(device) for k, v in out.maxes.items()}
        return out

    def steps(self, chunks: list) -> list:
        """`chunks` padded with empty ones to the largest count of any rank, so every rank takes
        the same number of optimiser steps (each one a collective)."""
        if self.world == 1:
            return chunks
        most = int(self.max(torch.tensor(len(chunks))))
        return chunks + [torch.zeros(0, dtype=torch.long)] * (most - len(chunks))

    # --- the loop's hooks ------------------------------------------------------------------------

    def share(self, rows):
        """This rank's contiguous share of a step's prompts (a datasets.Dataset of B rows): B / N."""
        return rows if self.world == 1 else rows.select(self.share_range(len(rows)))

    def share_range(self, n: int) -> range:
        """The positions of this rank's share among n rows (as datasets' contiguous `shard`)."""
        size, extra = divmod(n, self.world)
        start = size * self.rank + min(self.rank, extra)
        return range(start, start + size + (self.rank < extra))

    def any(self, flag: bool) -> bool:
        return bool(self.max(torch.tensor(int(bool(flag))))) if self.world > 1 else bool(flag)

    def first_stop(self, stop):
        """The stop reason of the lowest rank that has one (Ctrl-C, NaN steps, a failing reward), so
        every rank stops after the same step and writes the same checkpoint."""
        if self.world == 1:
            return stop
        return next((s for s in self.gather(stop) if s), None)

    @classmethod
    def join(cls, timeout_s: float, device: str = "auto", group_of_one: bool = False) -> Dist:
        """This process's place in the torchrun world, joining it first (see `init`)."""
        return init(timeout_s, device, group_of_one)


def _call(fn, *args, **kwargs):
    """A collective; a peer that died or timed out becomes one clear error, not a traceback. Any
    other failure is this rank's own (e.g. a tensor on a device the group has no backend for) and
    is raised as it is: it is a defect here, not a dead rank."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as err:
        if not _peer_failed(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(f"a collective across ranks failed (another rank died or timed out after "
                               f"train.dist_timeout_s): {first[:200]}") from err


def _peer_failed(err: RuntimeError) -> bool:
    """NCCL, the network and the rendezvous store raise DistError (backend, network, store); gloo a
    plain RuntimeError from its transport ("Connection closed by peer", "Timed out waiting ... for
    recv": both measured on torch 2.13)."""
    return isinstance(err, dist.DistError) or "gloo/transport/" in str(err)


# --- set-up and tear-down ----------------------------------------------------------------------

def from_env() -> Dist:
    """Rank and world as torchrun sets them (RANK, WORLD_SIZE, LOCAL_RANK); a world of one without."""
    return Dist(*torchrun_place())


def backend(device_type: str) -> str:
    """The process group's backend for a learner on `device_type`: gloo on the CPU; on CUDA, NCCL
    for CUDA tensors and gloo for the host tensors that counts, flags and pickled objects use.
    NCCL serves CUDA tensors only: with NCCL alone every collective on a CPU tensor raises."""
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"


def init(timeout_s: float, device: str = "auto", group_of_one: bool = False) -> Dist:
    """Join the torchrun world (idempotent): gloo on CPU, NCCL and gloo on CUDA (`backend`), with a
    timeout on every collective so a dead rank ends the others instead of hanging them.

    `group_of_one`: a single process still gets a world (of one) to stand in, for the parts that
    need one (fsdp2's device mesh); vLLM's engine then joins that world instead of making its own."""
    place = from_env()
    if (place.world == 1 and not group_of_one) or dist.is_initialized():
        return place
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        torch.cuda.set_device(place.local_rank)
    init_method = None
    if "MASTER_ADDR" not in os.environ:  # a world of one started without torchrun
        from vllm.utils.network_utils import get_open_port

        init_method = f"tcp://127.0.0.1:{get_open_port()}"
    dist.init_process_group(backend("cuda" if cuda else "cpu"), timeout=timedelta(seconds=timeout_s),
                            init_method=init_method, world_size=place.world, rank=place.rank)
    return place


def initialized() -> bool:
    """Whether this process joined a torch.distributed world (torchrun, or fsdp2's world of one)."""
    return dist.is_initialized()


def destroy() -> None:
    """Leave the world. Shut this process's vLLM engines down first (their shutdown destroys the
    groups vLLM built on top of ours, which fails once ours is gone)."""
    if not dist.is_initialized():
        return
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # a peer died: the group is broken already, and the process is ending
        pass
