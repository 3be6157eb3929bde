"""The learner: per-token log-probs of completions and the GRPO update of the policy.

Everything a step touches lives on `train.device`: the policy, the reference, the optimiser state
and the rollout batch, which is built on the host once and moved once. The step's metrics stay
on the device as 0-dim tensors; the logger copies them to the host once per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import get_scheduler

from grpo_cli.algo.correction import NoCorrection
from grpo_cli.algo.loss import GRPOLoss, LossInputs, LossStats
from grpo_cli.devices import DTYPES, resolve_device
from grpo_cli.learner import attention, host_memory
from grpo_cli.learner.guard import BadStepGuard
from grpo_cli.learner.logprobs import LogprobModel
from grpo_cli.learner.lora import apply_lora, merged_weights
from grpo_cli.learner.models import load_causal_lm
from grpo_cli.learner.packing import pack_ids, plan, unpack
from grpo_cli.parallel.dist import Dist
from grpo_cli.parallel.sharding import strategy
from grpo_cli.rollout.sampler import truncated as is_truncated


@dataclass
class RolloutBatch:
    """B*G sequences laid out as [left-padded prompt | right-padded completion].

    Every prompt ends at column P, so the hidden states that predict completion tokens are the
    last T + 1 positions but one, whatever each prompt's length. The lengths stay on the host
    (plain tensors on the CPU), so cutting a micro-batch never waits for the device.
    """

    input_ids: torch.Tensor  # [N, P + T]
    attention_mask: torch.Tensor  # [N, P + T]
    completion_mask: torch.Tensor  # [N, T] 1.0 on completion tokens the model generated (not tool results)
    advantages: torch.Tensor  # [N]
    sampler_logp: torch.Tensor  # [N, T] the sampler's log-probs of the sampled tokens
    prompt_lens: torch.Tensor  # [N] on the host
    completion_lens: torch.Tensor  # [N] on the host
    truncated: torch.Tensor  # [N] bool: the completion hit max_tokens (finish reason "length")
    prompt_groups: torch.Tensor  # [N] on the host: rows with equal ids have the same prompt tokens

    @classmethod
    def build(cls, prompt_ids, completion_ids, sampler_logp, advantages, pad_id: int,
              finish_reasons: list[str] | None = None, tool_mask: list[list[int]] | None = None) -> RolloutBatch:
        """`tool_mask` [N] per completion token (multi-turn rollouts): 0 on tokens a tool wrote, which
        the model reads but is never trained on: no loss, no KL, no entropy, not counted."""
        n = len(completion_ids)
        p = max(len(x) for x in prompt_ids)
        t = max(len(x) for x in completion_ids)
        ids = torch.full((n, p + t), pad_id, dtype=torch.long)
        attn = torch.zeros(n, p + t, dtype=torch.long)
        logp = torch.zeros(n, t)
        for i, (pr, co, lp) in enumerate(zip(prompt_ids, completion_ids, sampler_logp)):
            ids[i, p - len(pr) : p + len(co)] = torch.tensor(list(pr) + list(co))
            attn[i, p - len(pr) : p + len(co)] = 1
            logp[i, : len(lp)] = torch.tensor(lp)
        generated = attn[:, p:].float()  # [N, T]
        for i, mask in enumerate(tool_mask or []):
            generated[i, : len(mask)] = torch.tensor(mask, dtype=generated.dtype)
        lens = (torch.tensor([len(x) for x in prompt_ids]), torch.tensor([len(x) for x in completion_ids]))
        truncated = torch.tensor(is_truncated(finish_reasons or ["stop"] * n), dtype=torch.bool)
        first_seen: dict[tuple[int, ...], int] = {}
        groups = torch.tensor([first_seen.setdefault(tuple(pr), len(first_seen)) for pr in prompt_ids])
        return cls(ids, attn, generated, advantages.float().cpu(), logp, *lens, truncated, groups)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @classmethod
    def empty(cls) -> RolloutBatch:
        """No rows: a rank whose groups were all filtered out still takes part in the step."""
        z = torch.zeros(0, 1)
        none = torch.zeros(0, dtype=torch.long)
        return cls(z.long(), z.long(), z, torch.zeros(0), z, none, none, torch.zeros(0, dtype=torch.bool), none)

    _HOST = ("prompt_lens", "completion_lens", "prompt_groups")

    def to(self, device: torch.device) -> RolloutBatch:
        """The device tensors moved to `device` in one go; the lengths stay on the host."""
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self) if f.name not in self._HOST}
        return replace(self, **moved)

    def select(self, idx: torch.Tensor) -> RolloutBatch:
        """Rows `idx` (a host tensor), with the columns that are padding in all of them cut away."""
        t_full = self.completion_mask.shape[1]
        p_full = self.input_ids.shape[1] - t_full
        first = p_full - int(self.prompt_lens[idx].max())  # first column any of these prompts uses
        t = int(self.completion_lens[idx].max())  # longest completion among the rows
        rows = idx.to(self.input_ids.device, non_blocking=True)
        cols = slice(first, p_full + t)
        return RolloutBatch(
            self.input_ids[rows, cols], self.attention_mask[rows, cols], self.completion_mask[rows, :t],
            self.advantages[rows], self.sampler_logp[rows, :t], self.prompt_lens[idx], self.completion_lens[idx],
            self.truncated[rows], self.prompt_groups[idx],
        )


MASKED_ATTENTION = ("sdpa", "eager")  # attention implementations that take a prepared 4D mask


def packed_mask(model: torch.nn.Module, pk) -> torch.Tensor | None:
    """The packing's [R, 1, L, L] mask as the model's attention takes it: bool for sdpa (True =
    attend), additive for eager. transformers uses a 4D mask as given, so the forward has no
    data-dependent check (no host sync on CUDA, no graph break under torch.compile). Other
    implementations (flash attention) get None and find the sequences from the position ids."""
    impl = model.config._attn_implementation
    if impl not in MASKED_ATTENTION:
        return None
    mask = pk.attention_mask()  # [R, 1, L, L]
    if impl == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=model.dtype, device=mask.device).masked_fill_(~mask, torch.finfo(model.dtype).min)


def attention_cost(model: torch.nn.Module) -> float:
    """What one query-key pair of a packed row costs, in token slots: 4 H flops per layer (scores and
    values) against 2 N per token for the matmuls, times 5 because masked sdpa ran at about a fifth
    of the matmul rate on the CPU (scripts/profile_learner.py). Decides how wide packed rows get."""
    text = model.config.get_text_config()
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 5 * 4 * text.hidden_size * text.num_hidden_layers / (2 * n)


def optimiser_steps(completions: int, optim_batch_size: int | None, num_iterations: int) -> int:
    """Optimiser steps one loop step takes over `completions` rollouts (every rank's): mu passes of
    ceil(completions / optim_batch_size) optimiser batches each (one per pass when it is None)."""
    return num_iterations * -(-completions // (optim_batch_size or completions))


class Learner:
    def __init__(self, model: DictConfig, algo: DictConfig, optim: DictConfig, train: DictConfig, temperature: float,
                 seed: int, total_optim_steps: int, dist: Dist | None = None):
        """The config sections it reads (`model`, `algo`, `optim`, `train`), the sampling
        `temperature` (log-probs of the distribution sampled from), the `seed` of its micro-batch
        order, the optimiser steps of the whole run (`total_optim_steps`, for the LR schedule).
        `dist`: this rank's place among data-parallel ranks (grpo_cli/parallel/dist.py); the
        weights normalise by every rank's rows and gradients are summed over ranks."""
        self.train, self.algo, self.optim = train, algo, optim
        self.dist = dist or Dist()
        self.device = resolve_device(train.device)
        if self.device.type == "cpu":  # activations keep their pages from step to step (glibc)
            host_memory.keep_freed_memory()
        self.policy = load_causal_lm(model, model.dtype, trainable=True, device=self.device)
        # With model.lora.r > 0 only adapters train; they are injected into self.policy in place.
        # Their random init comes from the run seed, not from whatever the global RNG holds by now
        # (a sweep's or a test's earlier run in this process, a reused engine that did not reseed it).
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            self.peft = apply_lora(self.policy, model.lora) if model.lora.r else None
        # The reference is only needed for the KL term.
        self.ref = (load_causal_lm(model, model.dtype, trainable=False, device=self.device)
                    if algo.beta > 0 else None)
        # Each model as one module returning log-probs, laid over the ranks by train.strategy
        # (grpo_cli/parallel/sharding.py: replicated, or fsdp2's fully_shard); compiled with train.compile.
        self.sharding = strategy(train.strategy, self.dist, self.device)
        self.forwards = {m: LogprobModel(m, train.compile) for m in (self.policy, self.ref) if m is not None}
        for forward in self.forwards.values():
            self.sharding.shard(forward)
        # The reference's full weights as state_dict() / load_state_dict() (grpo_cli/algo/reference.py).
        self.ref_weights = self.sharding.weights_of(self.forwards[self.ref]) if self.ref is not None else None
        params = [p for p in self.policy.parameters() if p.requires_grad]  # this rank's shards under fsdp2
        self.optimizer = instantiate(optim.optimizer, params=params, lr=optim.lr)
        self.scheduler = get_scheduler(
            optim.scheduler, self.optimizer, num_warmup_steps=optim.warmup_steps,
            num_training_steps=max(total_optim_steps, 1),
        )
        self.loss_fn = GRPOLoss.from_config(algo)
        # Stale rollouts (algo.max_staleness > 0, grpo_cli/rollout/source.py): pi_old is the policy that
        # sampled, i.e. the sampler's log-probs, unless an IS correction weighs pi_old / pi_sampler.
        self.old_from_sampler = algo.max_staleness > 0 and isinstance(self.loss_fn.is_correction, NoCorrection)
        self.aggregation = instantiate(algo.aggregation)
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)  # micro-batch order (host); saved on resume
        self.bad_steps = BadStepGuard(train.max_bad_steps)  # NaN/Inf gradients skip the update
        dtype = train.autocast_dtype
        attention.install()  # on the CPU under autocast, attention in fp32 (its bf16 backward is slow there)
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=DTYPES[dtype])) if dtype else contextlib.nullcontext
        )
        self.tokens = torch.zeros(2)  # [real, slots] fed to the policy's forward this step
        # One 1-token sequence: what a rank forwards while another still has micro-batches (fsdp2).
        self.idle = RolloutBatch.build([[0]], [[0]], [[0.0]], torch.zeros(1), 0).to(self.device)
        self.attn_cost = attention_cost(self.policy)

    def completion_logprobs(self, model: torch.nn.Module, mb: RolloutBatch, entropy: bool = False):
        """log pi(token) of each completion token, at the sampling temperature, in fp32: [n, T].

        With `entropy`, also the entropy of pi at each of those positions, from the same chunks:
        ([n, T], [n, T]); it carries a gradient only when the loss has an entropy bonus.
        """
        t = mb.completion_mask.shape[1]
        ids, attn = mb.input_ids, mb.attention_mask  # [n, P + T]
        forward = self.forwards.get(model) or LogprobModel(model)  # any other model: as it is
        with self.autocast():
            if self.train.pack_sequences:  # grpo_cli/learner/packing.py: rows of whole sequences, no padding
                # Shared prompts need the tree-shaped 4D mask (sdpa, eager attention).
                share = self.train.share_prompts and model.config._attn_implementation in MASKED_ATTENTION
                groups = mb.prompt_groups if share else None
                pk = plan(mb.prompt_lens, mb.completion_lens, ids.shape[1], groups, self.attn_cost)
                slots = (pk.real_tokens, pk.src.numel())
                pk = pk.to(ids.device)
                inputs = dict(input_ids=pack_ids(ids, pk, 0), attention_mask=packed_mask(model, pk),
                              position_ids=pk.position_ids)  # [R, L] rows of whole sequences
                select = lambda h: h.flatten(0, 1)[pk.predict]  # noqa: E731  [R, L, H] -> [M, H] predicting completion tokens
                targets = ids[:, -t:][pk.rows, pk.cols]  # [M]
            else:
                # Positions count real tokens only, so left padding does not shift RoPE.
                positions = (attn.cumsum(-1) - 1).clamp_min(0)  # [n, P + T]
                slots = (int(mb.prompt_lens.sum() + mb.completion_lens.sum()), ids.numel())
                inputs = dict(input_ids=ids, attention_mask=attn, position_ids=positions)
                select = lambda h: h[:, -t - 1 : -1]  # noqa: E731  [n, P + T, H] -> [n, T, H]
                targets = ids[:, -t:]  # [n, T]
            # The backbone, then lm_head + log-softmax + gather in chunks: no [n, T, V] logits.
            logp, ent = forward(select, targets, self.temperature, self.train.logprob_chunk_mib, entropy,
                                **inputs)  # [M] or [n, T] each
        if model is self.policy and torch.is_grad_enabled():
            self.tokens += torch.tensor(slots)
        if self.train.pack_sequences:
            logp, ent = unpack(logp, pk, len(mb), t), unpack(ent, pk, len(mb), t)  # [n, T] each
        if not entropy:
            return logp
        return logp, ent if self.loss_fn.needs_entropy_grad else ent.detach()  # no bonus: no entropy backward

    def _micro_batches(self, n: int) -> list[torch.Tensor]:
        """Positions 0..n-1 cut into micro-batches of train.micro_batch_size (none when n = 0)."""
        return list(torch.arange(n).split(self.train.micro_batch_size)) if n else []

    @torch.no_grad()
    def _frozen_logprobs(self, model, batch: RolloutBatch) -> torch.Tensor:
        out = torch.zeros_like(batch.completion_mask)  # [N, T] on the device
        for idx in self.sharding.align(self._micro_batches(len(batch))):
            if idx is None:  # fsdp2: another rank has more micro-batches; join its collectives
                self.completion_logprobs(model, self.idle)
                continue
            mb = batch.select(idx)
            out[idx.to(out.device), : mb.completion_mask.shape[1]] = self.completion_logprobs(model, mb)
        return out

    def update(self, rollouts, advantages: torch.Tensor, beta: float, pad_id: int,
               entropy_coef: float | None = None) -> dict[str, torch.Tensor]:
        """The step's update on this rank's `rollouts` (a Rollouts, [n*G] each) with their
        `advantages` [n*G], the KL weight `beta` and the entropy bonus's `entropy_coef` (None keeps
        algo.entropy_coef); the device has finished when it returns.

        A rank with no group left after filtering still joins the step's collectives; with no
        group on any rank there is no update (and no metrics)."""
        self.loss_fn.beta = beta
        if entropy_coef is not None:
            self.loss_fn.entropy_coef = entropy_coef
        metrics = {}
        if self.dist.any(len(advantages)):
            batch = RolloutBatch.build(rollouts.prompt_ids, rollouts.completion_ids, rollouts.logprobs, advantages,
                                       pad_id, rollouts.finish_reasons, rollouts.tool_mask) if len(advantages) else None
            metrics = self.train_step(batch)  # 0-dim tensors on the learner's device
        self.synchronize()  # the update is done before it is timed and its weights are sent
        return metrics

    def train_step(self, batch: RolloutBatch | None) -> dict[str, torch.Tensor]:
        """mu passes over the batch in shuffled micro-batches, one optimiser step per optimiser batch.

        Returns the step's metrics as 0-dim tensors on the device (nothing here waits for it).
        With several ranks, each passes its own rows (None: none this step, e.g. all filtered
        out); weights, gradients and metrics are those of every rank's rows together.
        """
        batch = (batch or RolloutBatch.empty()).to(self.device)  # the one host -> device copy of the step
        self.tokens.zero_()
        n, mu = len(batch), self.algo.num_iterations
        per_rank = self.train.optim_batch_size and self.train.optim_batch_size // self.dist.world
        opt_bs = max(min(per_rank or n, n), 1)
        mask = self.loss_fn.loss_mask(batch.completion_mask, batch.truncated)  # [N, T] tokens in the loss
        ref_logp = self._frozen_logprobs(self.ref, batch) if self.ref is not None else None
        # pi_old is the policy that sampled; once an optimiser step has run within this batch the
        # current policy differs from it, so it needs its own no-grad forward.
        old_logp = self._frozen_logprobs(self.policy, batch) if (mu > 1 or opt_bs < n) else None
        zero = torch.zeros((), device=self.device)
        stats, grad_norms, loss_sum, drift_sum, drift_max = LossStats(), [], zero, zero, zero
        for it in range(mu):
            chunks = [c for c in torch.randperm(n, generator=self.generator).split(opt_bs) if len(c)]  # host indices
            for chunk in self.dist.steps(chunks):  # as many on every rank (some may be empty)
                # [n_opt, T] normalised over the optimiser batch (of every rank)
                weights = self.dist.global_weights(self.aggregation, mask[chunk.to(self.device)])
                bonus = self.loss_fn.entropy_aggregation  # the entropy bonus's own weights, when it has them
                bonus_weights = self.dist.global_weights(bonus, mask[chunk.to(self.device)]) if bonus else None
                for pos in self.sharding.align(self._micro_batches(len(chunk))):
                    if pos is None:  # fsdp2: another rank has more micro-batches; a zero-gradient pass
                        (self.completion_logprobs(self.policy, self.idle).sum() * 0.0).backward()
                        continue
                    idx, mb = chunk[pos].to(self.device), batch.select(chunk[pos])
                    t = mb.completion_mask.shape[1]
                    logp, entropy = self.completion_logprobs(self.policy, mb, entropy=True)  # [n, T] each
                    old = old_logp[idx, :t] if old_logp is not None else logp.detach()
                    ref = ref_logp[idx, :t] if ref_logp is not None else None
                    behaviour = mb.sampler_logp if self.old_from_sampler else old  # pi_old: [n, T]
                    inputs = LossInputs(logp, behaviour, mb.sampler_logp, ref, mb.advantages, mask[idx, :t], entropy)
                    rows = pos.to(self.device)
                    loss, s = self.loss_fn(inputs, weights[rows, :t],
                                           bonus_weights[rows, :t] if bonus_weights is not None else None)
                    loss.backward()
                    loss_sum = loss_sum + loss.detach()
                    stats.add(s)
                    if it == 0:  # sampler vs learner log-probs of the same weights
                        diff = (old.detach() - mb.sampler_logp).abs() * mb.completion_mask  # [n, T]
                        drift_sum, drift_max = drift_sum + diff.sum(), torch.maximum(drift_max, diff.amax())
                grad_norms.append(self._optimizer_step())
        d = self.dist  # the step's numbers over every rank (the identity with one)
        stats, loss_sum, tokens = d.reduce_stats(stats), d.sum(loss_sum), d.sum(self.tokens)
        drift_sum, drift_max = d.sum(drift_sum), d.max(drift_max)
        self.tokens = tokens
        return stats.means() | {
            "loss": loss_sum / len(grad_norms),  # mean over optimiser steps of each batch's loss
            "grad_norm": torch.stack(grad_norms).mean(),
            "lr": self.scheduler.get_last_lr()[0],  # a host float already
            "logprob_drift/mean": drift_sum / d.sum(batch.completion_mask.sum()).clamp_min(1.0),
            "logprob_drift/max": drift_max,
            # Share of the policy forward's token slots that were padding (packing keeps it small).
            "learner/pad_frac": 1.0 - float(self.tokens[0] / self.tokens[1].clamp_min(1.0)),
        }

    def _optimizer_step(self) -> torch.Tensor:
        max_norm = self.optim.max_grad_norm or float("inf")  # 0 = measure, do not clip
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.sharding.reduce_grads(params)  # ddp: summed over ranks here; fsdp2: in the backward
        norm = self.sharding.clip_grads(params, max_norm)  # 0-dim, on the device: the global norm
        self.bad_steps.step(self.optimizer, norm)  # skipped when the norm is NaN/Inf
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def synchronize(self) -> None:
        """Wait for the device (CUDA runs asynchronously); a no-op on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's parameters by the base model's names (LoRA merged in), for the sampler."""
        if self.peft is not None:
            yield from merged_weights(self.policy)
            return
        yield from self.sharding.full_weights(self.forwards[self.policy])

    def checkpoint_weights(self) -> dict[str, torch.Tensor] | None:
        """What a checkpoint exports when the policy is sharded: its full weights (every rank
        takes part in the gather); None when the policy itself can be saved."""
        if not self.sharding.sharded:
            return None
        return {name: w.cpu() for name, w in self.weights()}

    def load_weights(self, weights: dict[str, torch.Tensor]):
        """Full weights by transformers name into the policy (sharded or not): (missing, unexpected)."""
        return self.sharding.load_weights(self.forwards[self.policy], weights)

    @property
    def checkpoint_model(self) -> torch.nn.Module:
        """What a checkpoint saves: the PeftModel (the adapter) with LoRA, else the policy."""
        return self.peft if self.peft is not None else self.policy

    def rank_state_dict(self) -> dict:
        """The part of `state_dict` that is each rank's own (the micro-batch order); the rest is rank 0's."""
        return {"generator": self.generator.get_state()}

    def state_dict(self) -> dict:
        """What a resumed run needs besides the weights: optimiser, schedule, micro-batch order, fault counts."""
        state = {"optimizer": self.sharding.optimizer_state(self.forwards[self.policy], self.optimizer),
                 "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
                 "bad_steps": self.bad_steps.state_dict()}
        if self.peft is not None:  # LoRA: the checkpoint's export is the adapter; resume from these
            state["trainable"] = {n: p.detach().cpu() for n, p in self.policy.named_parameters() if p.requires_grad}
        return state

    def load_state_dict(self, state: dict, exported_weights=None) -> None:
        """`state` from `state_dict`; `exported_weights()` reads the checkpoint's exported full
        weights, which are the policy when every weight trains (with LoRA the adapters are in `state`)."""
        if "trainable" not in state and exported_weights is not None:
            exported_weights(self.policy, load=self.load_weights)
        self.sharding.load_optimizer_state(self.forwards[self.policy], self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.bad_steps.load_state_dict(state["bad_steps"])
        if "trainable" in state:
            with torch.no_grad():
                params = dict(self.policy.named_parameters())
                for name, value in state["trainable"].items():
                    params[name].copy_(value)
