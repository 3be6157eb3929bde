"""Per-token log-probs (and entropy) of sampled tokens without materialising [tokens, vocab] logits.

The naive path, `log_softmax(lm_head(h) / T).gather(target)`, holds fp32 logits for every token of
a micro-batch, copies them (`.float()`, `/ T`, `logsumexp`) and keeps them for the backward: for
Qwen's 151,936-token vocab and 16 x 1024 tokens that is ~10 GB per copy. Here lm_head, the
temperature, log-softmax and the gather run over chunks of tokens inside one autograd function;
the backward recomputes each chunk's logits from the saved hidden states, so neither pass ever
holds more than one chunk of logits. Only the per-token log-sum-exp is kept between the passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F


def chunk_tokens(vocab_size: int, chunk_mib: int) -> int:
    """Tokens per chunk so that one chunk of fp32 logits takes at most `chunk_mib` MiB."""
    return max(1, chunk_mib * 2**20 // (4 * vocab_size))


class _ChunkedLogprobs(torch.autograd.Function):
    """(hidden [M, H], weight [V, H], bias [V] | None, targets [M]) -> (logp [M], entropy [M]), fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk, compute_dtype, with_entropy):
        m = hidden.shape[0]
        logp = torch.empty(m, dtype=torch.float32, device=hidden.device)  # [M]
        entropy = torch.zeros_like(logp)  # [M] stays 0 unless asked for
        lse = torch.empty_like(logp)  # [M] saved for the backward
        w = weight.to(compute_dtype)  # [V, H] cast once, not per chunk
        b = None if bias is None else bias.to(compute_dtype)
        for s in range(0, m, chunk):
            e = min(s + chunk, m)
            z = F.linear(hidden[s:e].to(compute_dtype), w, b).float() / temperature  # [c, V] fp32
            lse[s:e] = z.logsumexp(-1)  # [c]
            logp[s:e] = z.gather(-1, targets[s:e, None]).squeeze(-1) - lse[s:e]  # [c]
            if with_entropy:  # H = lse - sum_v p_v z_v (the softmax of the same logits)
                entropy[s:e] = lse[s:e] - (torch.softmax(z, -1) * z).sum(-1)  # [c]
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.temperature, ctx.chunk, ctx.compute_dtype, ctx.with_entropy = temperature, chunk, compute_dtype, with_entropy
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):  # [M], [M] (either may be None)
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        t, chunk, cd = ctx.temperature, ctx.chunk, ctx.compute_dtype
        m = hidden.shape[0]
        w = weight.to(cd)  # [V, H]
        b = None if bias is None else bias.to(cd)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None  # [M, H]
        grad_w = None  # [V, H] fp32: the first chunk's product, then a sum (no zero-filled [V, H] to add it to)
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if bias is not None and ctx.needs_input_grad[2] else None
        rows = torch.arange(min(chunk, m), device=hidden.device)
        for s in range(0, m, chunk):
            e = min(s + chunk, m)
            h = hidden[s:e].to(cd)  # [c, H]
            # Recompute the chunk's log-softmax in place: at most two [c, V] buffers at a time.
            log_p = F.linear(h, w, b).float().div_(t).sub_(lse[s:e, None])  # [c, V]
            p = log_p.exp()  # [c, V] softmax
            # d logp_target / d z = onehot(target) - p;  d H / d z = -p * (log p + H)
            up = torch.zeros_like(lse[s:e]) if grad_logp is None else grad_logp[s:e]  # [c]
            if grad_entropy is not None and ctx.with_entropy:
                log_p.add_(entropy[s:e, None]).mul_(grad_entropy[s:e, None]).add_(up[:, None])
                g = p.mul_(log_p).neg_()  # [c, V] = -p * (up + grad_H * (log p + H))
            else:
                g = p.mul_(-up[:, None])  # [c, V]
            del log_p
            g[rows[: e - s], targets[s:e]] += up
            g = g.div_(t).to(cd)  # [c, V] through z = logits / T
            if grad_h is not None:
                grad_h[s:e] = (g @ w).to(hidden.dtype)  # [c, H]
            if ctx.needs_input_grad[1]:
                grad_w = (g.T @ h).float() if grad_w is None else grad_w.add_((g.T @ h).float())  # [V, H]
            if grad_b is not None:
                grad_b += g.float().sum(0)  # [V]
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(weight) if grad_w is None else grad_w.to(weight.dtype)  # no tokens: zeros
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,  # [..., H] final hidden states at the positions that predict `targets`
    lm_head: torch.nn.Linear,
    targets: torch.Tensor,  # [...] token ids
    temperature: float = 1.0,
    chunk_mib: int = 256,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(target) and the entropy of pi at each position, at `temperature`, in fp32: ([...], [...]).

    `with_entropy=False` skips the entropy (returned as zeros, without gradient): one pass less.

    Under torch.autocast the lm_head matmul runs in the autocast dtype (as the naive path would);
    the log-softmax, the gather and the entropy are always fp32. Gradients flow to `hidden` and to
    lm_head's weight (and bias), in chunks.
    """
    shape = targets.shape
    weight, bias = lm_head.weight, lm_head.bias
    device_type = hidden.device.type
    try:
        autocast = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device autocast does not know, e.g. `meta` in the device tests
        autocast = False
    compute_dtype = torch.get_autocast_dtype(device_type) if autocast else weight.dtype
    chunk = chunk_tokens(weight.shape[0], chunk_mib)
    # The function casts explicitly, so both passes compute alike (the backward runs outside autocast).
    with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
        logp, entropy = _ChunkedLogprobs.apply(
            hidden.reshape(-1, hidden.shape[-1]), weight, bias, targets.reshape(-1), temperature, chunk, compute_dtype,
            with_entropy,
        )
    return logp.view(shape), entropy.view(shape)


class LogprobModel(torch.nn.Module):
    """A causal LM whose forward returns per-token log-probs (and entropies) of `targets`.

    `select` picks, from the backbone's last hidden states, the positions that predict `targets`;
    lm_head + log-softmax + gather then run in chunks (grpo_cli/learner/logprobs.py): no [n, T, V] logits.
    """

    def __init__(self, lm: torch.nn.Module, compile: bool = False):
        super().__init__()
        self.lm = lm
        backbone = getattr(lm, lm.base_model_prefix)
        # Not a submodule: a compiled backbone wraps the same parameters `lm` registers already.
        self.__dict__["backbone"] = torch.compile(backbone, dynamic=True) if compile else backbone

    def forward(self, select: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor, temperature: float,
                chunk_mib: int, with_entropy: bool, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.backbone(**inputs, use_cache=False).last_hidden_state  # [R, L, H]
        logp, entropy = token_logprobs(select(hidden), self.lm.get_output_embeddings(), targets, temperature,
                                       chunk_mib, with_entropy=with_entropy)
        return logp.clone(), entropy.clone()  # not views: FSDP2 hooks the root's outputs for the backward
