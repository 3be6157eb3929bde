"""The learner: per-token log-probs of completions and the GRPO update of the policy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import get_scheduler

from grpo_cli.loss import GRPOLoss, LossInputs, LossStats, entropy_from_logits
from grpo_cli.models import DTYPES, load_causal_lm


@dataclass
class RolloutBatch:
    """B*G sequences laid out as [left-padded prompt | right-padded completion].

    Every prompt ends at column P, so the logits that predict completion tokens are the last
    T + 1 positions but one, whatever each prompt's length.
    """

    input_ids: torch.Tensor  # [N, P + T]
    attention_mask: torch.Tensor  # [N, P + T]
    completion_mask: torch.Tensor  # [N, T] 1.0 on completion tokens
    advantages: torch.Tensor  # [N]
    sampler_logp: torch.Tensor  # [N, T] the sampler's log-probs of the sampled tokens
    truncated: torch.Tensor  # [N] bool: the completion hit max_tokens (finish reason "length")

    @classmethod
    def build(cls, prompt_ids, completion_ids, sampler_logp, advantages, pad_id: int,
              finish_reasons: list[str] | None = None) -> RolloutBatch:
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
        truncated = torch.tensor([r == "length" for r in finish_reasons or ["stop"] * n], dtype=torch.bool)
        return cls(ids, attn, attn[:, p:].float(), advantages.float(), logp, truncated)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: torch.Tensor) -> RolloutBatch:
        """Rows `idx`, with the columns that are padding in all of them cut away."""
        attn = self.attention_mask[idx]  # [n, P + T]
        t_full = self.completion_mask.shape[1]
        first = int(attn.any(0).nonzero()[0])  # first column any prompt of these rows uses
        t = int(self.completion_mask[idx].sum(-1).max())  # longest completion among the rows
        cols = slice(first, attn.shape[1] - t_full + t)
        return RolloutBatch(
            self.input_ids[idx, cols], attn[:, cols], self.completion_mask[idx, :t],
            self.advantages[idx], self.sampler_logp[idx, :t], self.truncated[idx],
        )


class Learner:
    def __init__(self, cfg: DictConfig, total_optim_steps: int):
        self.cfg = cfg
        self.policy = load_causal_lm(cfg.model, cfg.model.dtype, trainable=True)
        # The reference is only needed for the KL term.
        self.ref = load_causal_lm(cfg.model, cfg.model.dtype, trainable=False) if cfg.algo.beta > 0 else None
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = instantiate(cfg.optim.optimizer, params=params, lr=cfg.optim.lr)
        self.scheduler = get_scheduler(
            cfg.optim.scheduler, self.optimizer, num_warmup_steps=cfg.optim.warmup_steps,
            num_training_steps=max(total_optim_steps, 1),
        )
        self.loss_fn = GRPOLoss.from_config(cfg.algo)
        self.aggregation = instantiate(cfg.algo.aggregation)
        self.temperature = cfg.sampler.temperature
        self.generator = torch.Generator().manual_seed(cfg.seed)  # micro-batch order; saved on resume
        self.device = next(self.policy.parameters()).device
        dtype = cfg.train.autocast_dtype
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=DTYPES[dtype])) if dtype else contextlib.nullcontext
        )

    def completion_logprobs(self, model: torch.nn.Module, mb: RolloutBatch, entropy: bool = False):
        """log pi(token) of each completion token, at the sampling temperature, in fp32: [n, T].

        With `entropy`, also the entropy of pi at each of those positions: ([n, T], [n, T]); it
        carries a gradient only when the loss has an entropy bonus.
        """
        t = mb.completion_mask.shape[1]
        ids, attn = mb.input_ids.to(self.device), mb.attention_mask.to(self.device)
        # Positions count real tokens only, so left padding does not shift RoPE.
        positions = (attn.cumsum(-1) - 1).clamp_min(0)  # [n, P + T]
        with self.autocast():
            out = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=t + 1)
        logits = out.logits[:, :-1].float() / self.temperature  # [n, T, V], fp32 from here on
        targets = ids[:, -t:]  # [n, T]
        # gather - logsumexp == log_softmax at the target, without a second [n, T, V] tensor.
        logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # [n, T]
        if not entropy:
            return logp
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.loss_fn.needs_entropy_grad):
            return logp, entropy_from_logits(logits)  # [n, T], [n, T]

    @torch.no_grad()
    def _frozen_logprobs(self, model, batch: RolloutBatch) -> torch.Tensor:
        out = torch.zeros_like(batch.completion_mask)  # [N, T]
        for idx in torch.arange(len(batch)).split(self.cfg.train.micro_batch_size):
            mb = batch.select(idx)
            out[idx, : mb.completion_mask.shape[1]] = self.completion_logprobs(model, mb).cpu()
        return out

    def train_step(self, batch: RolloutBatch) -> dict[str, float]:
        """mu passes over the batch in shuffled micro-batches, one optimiser step per optimiser batch."""
        n, mu = len(batch), self.cfg.algo.num_iterations
        opt_bs = min(self.cfg.train.optim_batch_size or n, n)
        mask = self.loss_fn.loss_mask(batch.completion_mask, batch.truncated)  # [N, T] tokens in the loss
        ref_logp = self._frozen_logprobs(self.ref, batch) if self.ref is not None else None
        # pi_old is the policy that sampled; once an optimiser step has run within this batch the
        # current policy differs from it, so it needs its own no-grad forward.
        old_logp = self._frozen_logprobs(self.policy, batch) if (mu > 1 or opt_bs < n) else None
        stats, grad_norms, loss_sum, drift_sum, drift_max = LossStats(), [], 0.0, 0.0, 0.0
        for it in range(mu):
            for chunk in torch.randperm(n, generator=self.generator).split(opt_bs):
                weights = self.aggregation.weights(mask[chunk])  # [n_opt, T] over the optimiser batch
                for pos in torch.arange(len(chunk)).split(self.cfg.train.micro_batch_size):
                    idx, mb = chunk[pos], batch.select(chunk[pos])
                    t = mb.completion_mask.shape[1]
                    logp, entropy = self.completion_logprobs(self.policy, mb, entropy=True)  # [n, T] each
                    old = old_logp[idx, :t] if old_logp is not None else logp.detach()
                    ref = ref_logp[idx, :t] if ref_logp is not None else None
                    inputs = LossInputs(logp, old, mb.sampler_logp, ref, mb.advantages, mask[idx, :t], entropy)
                    loss, s = self.loss_fn(inputs, weights[pos, :t])
                    loss.backward()
                    loss_sum += loss.item()
                    stats.add(s)
                    if it == 0:  # sampler vs learner log-probs of the same weights
                        base = old if old_logp is not None else logp.detach()
                        diff = (base - mb.sampler_logp).abs() * mb.completion_mask  # [n, T]
                        drift_sum, drift_max = drift_sum + diff.sum().item(), max(drift_max, diff.max().item())
                grad_norms.append(self._optimizer_step())
        metrics = stats.means() | {
            "loss": loss_sum / len(grad_norms),  # mean over optimiser steps of each batch's loss
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": self.scheduler.get_last_lr()[0],
            "logprob_drift/mean": drift_sum / max(batch.completion_mask.sum().item(), 1.0),
            "logprob_drift/max": drift_max,
        }
        return metrics

    def _optimizer_step(self) -> float:
        max_norm = self.cfg.optim.max_grad_norm or float("inf")  # 0 = measure, do not clip
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm).item()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's parameters by name, for the sampler."""
        for name, tensor in self.policy.state_dict().items():
            yield name, tensor.detach()
