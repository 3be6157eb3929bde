"""How the learner's models are laid over the ranks: `train.strategy`.

    ddp    every rank holds the whole policy, reference and AdamW state; the gradients are summed
           over ranks in one flat all-reduce before each optimiser step (grpo_cli/parallel/dist.py).
    fsdp2  torch's `fully_shard`: every decoder layer is one FSDP unit and the rest of the model
           (embeddings, final norm, lm_head) the root unit, so a rank holds 1/N of every parameter,
           gradient and AdamW moment. A unit's parameters are all-gathered just before its forward
           (and again for its backward) and its gradients reduce-scattered right after.

The learner talks to a strategy through a narrow interface: `shard` the models once, `reduce_grads`
before the optimiser step, `full_weights` for the sampler and checkpoints, `optimizer_state` /
`load_optimizer_state` for the run state, `load_weights` on resume, and `align` so that every rank
runs as many forwards as the others (each FSDP forward and backward is a collective).

The policy's log-probs run through `LogprobModel` (grpo_cli/learner/logprobs.py), one module whose forward is the backbone then the
chunked lm_head log-softmax: FSDP2 unshards the root's parameters in the root's forward, so the
lm_head (tied to the embeddings in Qwen2.5 and the tiny models) must be used inside that forward.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.distributed.checkpoint import state_dict as dcp

from grpo_cli.parallel.dist import Dist


class Replicated:
    """`train.strategy=ddp` (and one process): whole models on every rank, gradients all-reduced."""

    sharded = False

    def __init__(self, dist: Dist):
        self.dist = dist

    def shard(self, model: torch.nn.Module) -> None:
        pass

    def reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        self.dist.all_reduce_grads(params)

    def clip_grads(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip to `max_norm` by the global gradient norm; returns that norm (0-dim)."""
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def full_weights(self, model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """The LM's parameters by their transformers names."""
        for name, tensor in model.lm.state_dict().items():
            yield name, tensor.detach()

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def load_weights(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]):
        """Full tensors by transformers name into the LM; returns (missing, unexpected) keys."""
        return model.lm.load_state_dict(weights, strict=False)

    def align(self, items: list) -> list:
        return items

    def weights_of(self, model: torch.nn.Module):
        """The model's full weights as state_dict() / load_state_dict() (the reference refresh)."""
        return model.lm


class FullyShard(Replicated):
    """`train.strategy=fsdp2`: parameters, gradients and optimiser state sharded with `fully_shard`."""

    sharded = True

    def __init__(self, dist: Dist, device: torch.device):
        super().__init__(dist)
        from torch.distributed.device_mesh import init_device_mesh

        self.mesh = init_device_mesh(device.type, (dist.world,))

    def shard(self, model: torch.nn.Module) -> None:
        from torch.distributed.fsdp import fully_shard

        layers = set(getattr(model.lm, "_no_split_modules", None) or ())  # e.g. {"Qwen2DecoderLayer"}
        units = [m for m in model.lm.modules() if type(m).__name__ in layers]
        if not units:
            from grpo_cli.errors import ConfigError

            raise ConfigError(f"train.strategy='fsdp2' is invalid for {type(model.lm).__name__}: the model names no "
                              "decoder layer class (_no_split_modules) to shard by; use train.strategy=ddp")
        for unit in units:
            fully_shard(unit, mesh=self.mesh)
        fully_shard(model, mesh=self.mesh)  # the root: embeddings, final norm and lm_head (tied or not)
        # Each rank's loss is its share of the global loss (Dist.global_weights): sum, do not average
        # (as a plain SUM: gloo has no pre-multiplied sum).
        for unit in [*units, model]:
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)

    def reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        pass  # reduce-scattered by FSDP during the backward

    def clip_grads(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """The norm of the sharded gradients is a partial sum on each rank: made whole, then clipped."""
        from torch.distributed.tensor import DTensor

        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    def full_weights(self, model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """Every parameter's full tensor, gathered on every rank in the same (state_dict) order, one
        at a time: the generator drops each before it gathers the next, so a rank never holds more
        than one full tensor (plus what the consumer keeps). Tied names (lm_head = embeddings) get
        the same tensor, gathered once and yielded under each name in a row.

        Read through the FSDP root (its state-dict hook puts the sharded parameters back first).
        Its state_dict() holds a separate DTensor per name, so ties are found by parameter identity."""
        from torch.distributed.tensor import DTensor

        shards = model.state_dict()  # name -> this rank's shard (a DTensor)
        names_of: dict[int, list[str]] = {}  # a parameter -> every name it has (several when tied)
        for name, param in model.named_parameters(remove_duplicate=False):
            names_of.setdefault(id(param), []).append(name)
        tied = {name: [n for n in names if n in shards] for names in names_of.values() for name in names}
        done: set[str] = set()
        for name, tensor in shards.items():
            if name in done:
                continue
            full = (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach()
            for same in tied.get(name, [name]):
                done.add(same)
                yield same.removeprefix("lm."), full
            del full  # before the next gather

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The full (unsharded) optimiser state by parameter name, on rank 0 ({} elsewhere)."""
        return dcp.get_optimizer_state_dict(model, optimizer,
                                            options=dcp.StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        dcp.set_optimizer_state_dict(model, optimizer, state, options=dcp.StateDictOptions(full_state_dict=True))

    def load_weights(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]):
        keys = dcp.set_model_state_dict(model, {f"lm.{k}": v for k, v in weights.items()},
                                        options=dcp.StateDictOptions(full_state_dict=True, strict=False))
        return ([k.removeprefix("lm.") for k in keys.missing_keys], [k.removeprefix("lm.") for k in keys.unexpected_keys])

    def align(self, items: list) -> list:
        """`items` padded with None to the longest list of any rank: a rank runs an idle forward
        for each None, so every rank joins every FSDP all-gather and reduce-scatter."""
        most = int(self.dist.max(torch.tensor(len(items))))
        return items + [None] * (most - len(items))

    def weights_of(self, model: torch.nn.Module) -> _FullWeights:
        return _FullWeights(self, model)


class _FullWeights:
    """A sharded model's weights seen whole: state_dict() gathers, load_state_dict() shards."""

    def __init__(self, sharding: FullyShard, model: torch.nn.Module):
        self.sharding, self.model = sharding, model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.sharding.full_weights(self.model))

    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        self.sharding.load_weights(self.model, weights)


def strategy(name: str, dist: Dist, device: torch.device) -> Replicated:
    return FullyShard(dist, device) if name == "fsdp2" else Replicated(dist)
