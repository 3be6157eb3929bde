"""The learner on a device: every tensor of a step where `train.device` says, and log-probs that never
materialise [tokens, vocab] logits.

A CPU machine cannot run CUDA, but PyTorch's `meta` device (shapes only) fails exactly like CUDA
does when an op mixes it with a host tensor. So a learner step on `meta` catches any tensor the
code forgets to move.
"""

from __future__ import annotations

import pytest
import torch
import transformers.masking_utils

from grpo_cli.devices import resolve_device
from grpo_cli.errors import UserError
from grpo_cli.learner.guard import BadStepGuard
from grpo_cli.learner.learner import RolloutBatch
from grpo_cli.learner.logprobs import chunk_tokens, token_logprobs
from tests.conftest import compose, make_learner
from tests.naive import naive_token_logprobs

PAD = 0


def _batch() -> RolloutBatch:
    prompts = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]]
    completions = [[30, 31], [40, 41, 42], [50], [60, 61, 62, 63]]
    return RolloutBatch.build(prompts, completions, [[-1.0] * len(c) for c in completions],
                              torch.tensor([1.0, -0.5, 0.5, -1.0]), PAD)


@pytest.fixture
def on_meta(monkeypatch):
    # transformers' sdpa mask asks `padding_mask.all()` to maybe skip the mask: a host sync on
    # CUDA, impossible on meta. The one data-dependent check is answered "no" (the mask is built).
    monkeypatch.setattr(transformers.masking_utils, "_ignore_causal_mask_sdpa", lambda *a, **k: False)
    # Packed sequences (train.pack_sequences) need no stub: the learner hands transformers the 4D
    # mask of its host-side plan, so nothing asks the device whether rows hold several sequences.
    # A non-fused optimiser's NaN/Inf check reads the grad norm on the host: answered "finite".
    monkeypatch.setattr(BadStepGuard, "finite_on_host", staticmethod(lambda norm: True))


# mu = 2 and two optimiser batches exercise every path: reference, pi_old forward, accumulation.
META = ["train.device=meta", "optim.optimizer.fused=false", "algo.beta=0.04", "algo.num_iterations=2",
        "train.optim_batch_size=2", "train.micro_batch_size=1"]


def test_a_learner_step_on_the_meta_device_keeps_every_tensor_there(tiny_overrides, on_meta):
    learner = make_learner(compose(tiny_overrides + META), total_optim_steps=4)
    assert {p.device.type for p in learner.policy.parameters()} == {"meta"}
    assert {p.device.type for p in learner.ref.parameters()} == {"meta"}
    metrics = learner.train_step(_batch())
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    assert {"loss", "grad_norm", "kl/mean", "clip_frac", "logprob_drift/max"} <= set(tensors)
    assert {k: v.device.type for k, v in tensors.items()} == {k: "meta" for k in tensors}
    assert all(v.dim() == 0 for v in tensors.values())
    state = learner.optimizer.state[next(learner.policy.parameters())]
    assert {v.device.type for v in state.values() if v.dim() > 0} == {"meta"}


def test_the_meta_step_catches_a_tensor_left_on_the_host(tiny_overrides, on_meta, monkeypatch):
    """The negative control: forget to move one field and the step fails, as it would on CUDA."""
    real_to = RolloutBatch.to

    def to_but_advantages(self, device):
        return RolloutBatch(**(vars(real_to(self, device)) | {"advantages": self.advantages}))

    monkeypatch.setattr(RolloutBatch, "to", to_but_advantages)
    learner = make_learner(compose(tiny_overrides + META), total_optim_steps=4)
    with pytest.raises(RuntimeError, match="device"):
        learner.train_step(_batch())


def test_train_device_auto_is_cpu_here_and_bad_names_are_one_line():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match=r"^train.device='gpu' is invalid: use auto, cpu, cuda or cuda:N$"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares a CUDA learner step with the CPU's")
def test_a_learner_step_on_cuda_equals_the_cpu_step(tiny_overrides):
    out = {}
    for device in ("cpu", "cuda"):
        learner = make_learner(compose(tiny_overrides + [f"train.device={device}", "algo.beta=0.04"]), total_optim_steps=1)
        out[device] = {k: float(v) for k, v in learner.train_step(_batch()).items()}
    for k in out["cpu"]:
        assert out["cuda"][k] == pytest.approx(out["cpu"][k], rel=1e-3, abs=1e-5), k


# --- memory-efficient log-probs ------------------------------------------------------------------

@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_mib", [0, 1, 64])  # 0 -> one token per chunk
def test_chunked_logprobs_and_gradients_equal_the_naive_path(bias, chunk_mib):
    """Vocab 4,096 (not tiny: several chunks), hidden 64, 2 x 150 tokens, temperature 0.7."""
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(64, 4096, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(4096, 64, generator=g) * 0.3)
    hidden = torch.randn(2, 150, 64, generator=g, requires_grad=True)
    targets = torch.randint(0, 4096, (2, 150), generator=g)
    up_lp, up_ent = torch.randn(2, 150, generator=g), torch.randn(2, 150, generator=g)
    results = []
    for fn in (token_logprobs, naive_token_logprobs):
        hidden.grad, head.weight.grad, head.bias = None, None, head.bias
        head.zero_grad()
        kwargs = {"chunk_mib": chunk_mib} if fn is token_logprobs else {}
        lp, ent = fn(hidden, head, targets, 0.7, **kwargs)
        ((lp * up_lp).sum() + (ent * up_ent).sum()).backward()
        grads = [hidden.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if bias else [])
        results.append([lp.detach(), ent.detach(), *grads])
    if chunk_mib == 1:
        assert chunk_tokens(4096, 1) == 64  # 300 tokens -> 5 chunks
    for name, a, b in zip(["logp", "entropy", "d hidden", "d weight", "d bias"], *results):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item()), (name, (a - b).abs().max())


def test_learner_logprobs_equal_a_plain_forward_with_full_logits(tiny_overrides):
    """The learner's chunked path vs the model's own logits, with padding and a temperature."""
    learner = make_learner(compose(tiny_overrides + ["sampler.temperature=0.7", "train.logprob_chunk_mib=1"]),
                           total_optim_steps=1)
    batch = _batch()
    with torch.no_grad():
        chunked = learner.completion_logprobs(learner.policy, batch)  # [N, T]
        t = batch.completion_mask.shape[1]
        logits = learner.policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp_min(0)).logits
        naive = (logits[:, -t - 1 : -1] / 0.7).log_softmax(-1).gather(-1, batch.input_ids[:, -t:, None]).squeeze(-1)
    assert torch.allclose(chunked * batch.completion_mask, naive * batch.completion_mask, atol=1e-5)


def test_sleep_mode_without_cuda_is_a_one_line_error(tiny_overrides):
    from grpo_cli.rollout.colocated import ColocatedSampler
    from grpo_cli.rollout.sampler import SamplerError

    cfg = compose(tiny_overrides + ["sampler.sleep_level=1"])
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, where sleep mode is allowed")
    with pytest.raises(SamplerError, match=r"^sampler.sleep_level=1 needs a CUDA GPU: vLLM's sleep mode exists only on CUDA"):
        ColocatedSampler(cfg.sampler, cfg.model)
