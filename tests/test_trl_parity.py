"""Parity with TRL 1.16: every loss variant grpo-cli shares with TRL gives TRL's loss and gradient.

One tiny Qwen2, identical prompt/completion ids, advantages and old/reference/sampler log-probs go
to TRL's own `GRPOTrainer._compute_loss` (a real trainer, built once per temperature) and to
grpo-cli's `Learner.train_step` (which computes its log-probs itself: chunked, packed, shared
prompts). Compared: the loss and the gradient of every parameter, in fp32.

Tolerance: the two compute per-token log-probs by different kernels (TRL: its fused LM head over
padded rows; grpo-cli: packed rows with a tree-shaped prompt mask, chunked log-softmax), so the
log-probs differ in the last bits of fp32 and every number downstream inherits that:
|loss diff| <= 1e-6 and |grad diff| <= 1e-6 * max(1, max |grad|), several times the largest
difference measured (2.4e-7; `-s` prints the table) and far below what any broken part changes.

Where grpo-cli differs on purpose (population vs Bessel std, the entropy bonus's weights, token
mean over the optimiser batch vs TRL's bnpo per micro-batch), a test shows that the stated cause
alone reproduces TRL's number.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pytest
import torch
from omegaconf import open_dict

pytest.importorskip("trl")

from grpo_cli.algo.advantages import Advantages  # noqa: E402
from grpo_cli.algo.entropy import EntropyControl  # noqa: E402
from grpo_cli.learner.learner import RolloutBatch  # noqa: E402
from grpo_cli.rewards import RewardResult  # noqa: E402
from tests.conftest import compose, make_learner  # noqa: E402

P, G, T, TEMPERATURE = 2, 4, 7, 0.7
LENGTHS = [7, 3, 5, 6, 4, 7, 2, 5]  # completion lengths: rows 0 and 5 fill T
LOSS_TOL, GRAD_TOL = 1e-6, 1e-6
REPORT: dict[str, tuple[float, float]] = {}


@dataclass
class Batch:
    prompt_ids: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, T], pad right
    mask: torch.Tensor  # [N, T]
    advantages: torch.Tensor  # [N]
    sampler_logp: torch.Tensor  # [N, T]: the model's log-probs plus noise (ratios on both sides of the clip)


def _build_trainer(model_path, temperature: float):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    args = GRPOConfig(output_dir=str(model_path / "trl"), per_device_train_batch_size=P * G, num_generations=G,
                      max_completion_length=T, temperature=temperature, report_to=[], use_cpu=True, bf16=False,
                      save_strategy="no", beta=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                              train_dataset=Dataset.from_dict({"prompt": ["x"] * P}),
                              processing_class=AutoTokenizer.from_pretrained(model_path))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


@pytest.fixture(scope="module")
def trainers(tiny_model):
    cache = {}

    def get(temperature: float = TEMPERATURE):
        if temperature not in cache:
            cache[temperature] = _build_trainer(tiny_model, temperature)
        return cache[temperature]

    yield get
    if REPORT:
        print("\nvariant                         max|loss diff|  max|grad diff|  (tolerance 1e-6, 1e-6 * max(1, max|grad|))")
        for name, (dl, dg) in REPORT.items():
            print(f"{name:32s}{dl:14.2e}{dg:16.2e}")


@pytest.fixture(scope="module")
def batch(trainers) -> Batch:
    gen = torch.Generator().manual_seed(0)
    vocab = trainers().model.config.vocab_size
    prompts = torch.randint(3, vocab, (P, 5), generator=gen).repeat_interleave(G, 0)  # [N, 5], equal lengths
    ids = torch.randint(3, vocab, (P * G, T), generator=gen)  # [N, T]
    mask = (torch.arange(T) < torch.tensor(LENGTHS)[:, None]).float()  # [N, T]
    ids = ids * mask.long()  # pad id 0 after each completion
    adv = torch.randn(P * G, generator=gen)  # [N], both signs
    with torch.no_grad():
        true = _trl_logps(trainers(), prompts, ids, mask)  # [N, T]
    sampler = (true + 0.3 * torch.randn(P * G, T, generator=gen)) * mask  # [N, T]
    return Batch(prompts, ids, mask, adv, sampler)


def _trl_logps(trainer, prompts, ids, mask):
    """Per-token log-probs (and entropies) by TRL's own forward: ([N, T], [N, T])."""
    attn = torch.cat([torch.ones_like(prompts), mask.long()], 1)
    logps, ent, _ = trainer._get_per_token_logps_and_entropies(trainer.model, torch.cat([prompts, ids], 1), attn, T,
                                                               compute_entropy=True)
    return logps


def trl_is_ratio(mode: str, old, sampler, mask, clip_max, clip_min):
    """TRL's `importance_sampling_ratio` (trl/trainer/grpo_trainer.py 1.16, _generate_and_score_completions,
    the block under `vllm_importance_sampling_correction`), line for line."""
    diff = torch.nan_to_num((old - sampler) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    lo = -math.inf if clip_min is None else clip_min
    hi = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)


def run_trl(trainer, b: Batch, settings: dict, args: dict | None = None, stale: bool = False, beta: float = 0.0,
            ref=None, is_mode=None, rows=None, mask=None):
    """TRL's loss and gradients [name -> grad] for `b` (rows `rows`), with trainer attributes
    `settings` and GRPOConfig fields `args` (restored afterwards)."""
    defaults = dict(loss_type="grpo", epsilon_low=0.2, epsilon_high=0.2, beta=beta, importance_sampling_level="token",
                    top_entropy_quantile=1.0, off_policy_mask_threshold=None, entropy_coef=0.0,
                    _entropy_bonus_enabled=False, use_adaptive_entropy=False, use_vllm=False,
                    vllm_importance_sampling_correction=False, max_completion_length=T)
    saved_args = {k: getattr(trainer.args, k) for k in (args or {})}
    for k, v in {**defaults, "beta": beta, **settings}.items():
        setattr(trainer, k, v)
    for k, v in (args or {}).items():
        setattr(trainer.args, k, v)
    idx = torch.arange(P * G) if rows is None else rows
    m = (b.mask if mask is None else mask)[idx]
    inputs = dict(prompt_ids=b.prompt_ids[idx], prompt_mask=torch.ones_like(b.prompt_ids[idx]),
                  completion_ids=b.completion_ids[idx], completion_mask=m, advantages=b.advantages[idx],
                  num_items_in_batch=m.sum(), sampling_per_token_logps=b.sampler_logp[idx])
    if stale:  # pi_old = the sampler's log-probs
        inputs["old_per_token_logps"] = b.sampler_logp[idx]
    if ref is not None:
        inputs["ref_per_token_logps"] = ref[idx]
    if is_mode is not None:  # TRL computes pi_old with a no-grad forward when it corrects for vLLM
        mode, cmax, cmin = is_mode
        with torch.no_grad():
            old = _trl_logps(trainer, b.prompt_ids[idx], b.completion_ids[idx], m)
        inputs["old_per_token_logps"] = old
        inputs["importance_sampling_ratio"] = trl_is_ratio(mode, old, b.sampler_logp[idx], m, cmax, cmin)
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    for k, v in saved_args.items():
        setattr(trainer.args, k, v)
    return loss.detach(), grads


def run_grpo_cli(tiny_overrides, b: Batch, overrides: list[str], stale: bool = False, temperature=TEMPERATURE,
                 rows=None, truncated=None, perturb_ref: bool = False):
    """grpo-cli's loss and gradients (captured before the optimiser step) for `b` (rows `rows`);
    with `perturb_ref`, the reference is moved away from the policy, and its log-probs returned too."""
    cfg = compose(tiny_overrides + [f"sampler.temperature={temperature}", "train.micro_batch_size=8",
                                    f"sampler.max_tokens={T}", "optim.max_grad_norm=0"] + overrides)
    if stale:  # stale rollouts: pi_old is the sampler's log-probs (no IS correction)
        with open_dict(cfg):
            cfg.algo.max_staleness = 1
    learner = make_learner(cfg, total_optim_steps=1)
    if perturb_ref:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in learner.ref.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    idx = torch.arange(P * G) if rows is None else rows
    lens = [int(x) for x in b.mask[idx].sum(-1)]
    completions = [b.completion_ids[i, :n].tolist() for i, n in zip(idx.tolist(), lens)]
    sampler = [b.sampler_logp[i, :n].tolist() for i, n in zip(idx.tolist(), lens)]
    finish = None if truncated is None else ["length" if truncated[i] else "stop" for i in idx.tolist()]
    rb = RolloutBatch.build(b.prompt_ids[idx].tolist(), completions, sampler, b.advantages[idx], 0, finish)
    ref = None
    if perturb_ref:
        with torch.no_grad():
            ref = learner.completion_logprobs(learner.ref, rb) * b.mask[idx]
    captured = {}
    step = learner._optimizer_step

    def capture():
        captured.update({n: p.grad.detach().clone() for n, p in learner.policy.named_parameters() if p.grad is not None})
        return step()

    learner._optimizer_step = capture
    metrics = learner.train_step(rb)
    return metrics["loss"].detach(), captured, ref, metrics


def diffs(a, b) -> tuple[float, float, float]:
    (la, ga), (lb, gb) = a, b
    assert ga.keys() == gb.keys()
    dg = max(float((ga[n] - gb[n]).abs().max()) for n in ga)
    scale = max(float(g.abs().max()) for g in ga.values())
    return abs(float(la - lb)), dg, scale


def assert_same(name, ours, theirs):
    dl, dg, scale = diffs(ours, theirs)
    REPORT[name] = (dl, dg)
    assert dl <= LOSS_TOL, f"{name}: loss {float(ours[0]):.8g} vs TRL {float(theirs[0]):.8g}"
    assert dg <= GRAD_TOL * max(1.0, scale), f"{name}: max |grad diff| {dg:.3g} (max |grad| {scale:.3g})"
    assert scale > 0


def assert_differ(name, ours, theirs):
    dl, dg, scale = diffs(ours, theirs)
    assert dl > 10 * LOSS_TOL or dg > 10 * GRAD_TOL * max(1.0, scale), f"{name}: expected a difference"


# One case per shared variant: (grpo-cli overrides, TRL trainer attributes, TRL GRPOConfig fields, stale).
GSPO = ["algo=gspo", "algo.epsilon=0.2", "algo.epsilon_high=null"]
CASES = {
    "grpo": (["algo=grpo", "algo.beta=0"], {}, {}, True),
    "bnpo (no accumulation)": (["algo=grpo", "algo.beta=0", "algo.aggregation._target_=grpo_cli.algo.aggregation.TokenMean"],
                               {"loss_type": "bnpo"}, {}, True),
    "dr_grpo": (["algo=dr_grpo"], {"loss_type": "dr_grpo"}, {}, True),
    "dapo (clip-higher)": (["algo=dapo"], {"loss_type": "dapo", "epsilon_high": 0.28},
                           {"steps_per_generation": 1}, True),
    "cispo": (["algo=cispo", "algo.objective.clip_max=1.2"], {"loss_type": "cispo", "epsilon_high": 1.2},
              {"steps_per_generation": 1}, True),
    "sapo": (["algo=sapo"], {"loss_type": "sapo"}, {"sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05}, True),
    "luspo": (["algo=luspo", "algo.epsilon=0.2", "algo.epsilon_high=null"],
              {"loss_type": "luspo", "importance_sampling_level": "sequence"}, {}, True),
    "vespo": (["algo=vespo"], {"loss_type": "vespo"}, {"steps_per_generation": 1}, True),
    "gspo": (GSPO, {"importance_sampling_level": "sequence"}, {}, True),
    "gspo-token (= gspo, A per sequence)": (GSPO + ["algo.objective._target_=grpo_cli.algo.objectives.GSPOToken"],
                                            {"importance_sampling_level": "sequence"}, {}, True),
    "two-sided clip (delta) = DualClip": (["algo=grpo", "algo.beta=0", "algo.objective._target_=grpo_cli.algo.objectives.DualClip",
                                           "+algo.objective.clip_c=1.3"], {}, {"delta": 1.3}, True),
    # delta > 1 + epsilon_high (TRL's advice), where delta is dual-clip's c
    "gspo + delta = GSPODualClip": (["algo=gspo", "algo.epsilon=0.01", "algo.epsilon_high=null",
                                     "algo.objective._target_=grpo_cli.algo.objectives.GSPODualClip",
                                     "+algo.objective.clip_c=1.02"],
                                    {"importance_sampling_level": "sequence", "epsilon_low": 0.01, "epsilon_high": 0.01},
                                    {"delta": 1.02}, True),
    "top-entropy mask": (["algo=grpo", "algo.beta=0", "+algo/policy_masks=top_entropy"], {"top_entropy_quantile": 0.2}, {}, True),
    "off-policy sequence mask": (["algo=grpo", "algo.beta=0", "+algo/policy_masks=off_policy",
                                  "algo.policy_masks.off_policy.delta=0.05"], {"off_policy_mask_threshold": 0.05}, {}, True),
    "entropy bonus, token mean (dr_grpo)": (["algo=dr_grpo", "algo.entropy_coef=0.05",
                                             "+algo.entropy_aggregation._target_=grpo_cli.algo.aggregation.TokenMean"],
                                            {"loss_type": "dr_grpo", "entropy_coef": 0.05, "_entropy_bonus_enabled": True},
                                            {}, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradients_equal_trl(name, trainers, batch, tiny_overrides):
    overrides, settings, args, stale = CASES[name]
    ours = run_grpo_cli(tiny_overrides, batch, overrides, stale=stale)
    assert_same(name, ours[:2], run_trl(trainers(), batch, settings, args, stale=stale))


def test_temperature_one_equals_trl(trainers, batch, tiny_overrides):
    ours = run_grpo_cli(tiny_overrides, batch, ["algo=grpo", "algo.beta=0"], stale=True, temperature=1.0)
    assert_same("temperature 1.0", ours[:2], run_trl(trainers(1.0), batch, {}, stale=True))


@pytest.mark.parametrize("mode,cmax,cmin", [("token_truncate", 1.3, None), ("token_mask", 1.3, 0.8),
                                            ("sequence_truncate", 1.5, None), ("sequence_mask", 1.5, 0.5)])
def test_is_correction_equals_trl(mode, cmax, cmin, trainers, batch, tiny_overrides):
    level, kind = mode.split("_")
    target = {"truncate": "TruncatedIS", "mask": "MaskedIS"}[kind]
    overrides = ["algo=grpo", "algo.beta=0", f"algo.is_correction._target_=grpo_cli.algo.correction.{target}",
                 f"+algo.is_correction.level={level}", f"+algo.is_correction.clip_max={cmax}",
                 f"+algo.is_correction.clip_min={'null' if cmin is None else cmin}"]
    ours = run_grpo_cli(tiny_overrides, batch, overrides)
    settings = {"use_vllm": True, "vllm_importance_sampling_correction": True}
    assert_same(f"is {mode}", ours[:2], run_trl(trainers(), batch, settings, is_mode=(mode, cmax, cmin)))


def test_mask_truncated_equals_trl(trainers, batch, tiny_overrides):
    truncated = torch.tensor(LENGTHS) == T  # rows that hit max_tokens
    ours = run_grpo_cli(tiny_overrides, batch, ["algo=grpo", "algo.beta=0", "algo.mask_truncated=true"], stale=True,
                        truncated=truncated)
    theirs = run_trl(trainers(), batch, {}, stale=True, mask=batch.mask * (~truncated)[:, None])
    assert_same("mask_truncated", ours[:2], theirs)


@pytest.mark.parametrize("weighted", [False, True])
def test_kl_equals_trl(weighted, trainers, batch, tiny_overrides):
    kl = "RatioWeightedKL" if weighted else "TokenKL"
    ours = run_grpo_cli(tiny_overrides, batch, ["algo=grpo", "algo.beta=0.1", f"algo.kl._target_=grpo_cli.algo.kl.{kl}"],
                        stale=True, perturb_ref=True)
    theirs = run_trl(trainers(), batch, {}, {"use_bias_correction_kl": weighted}, stale=True, beta=0.1, ref=ours[2])
    assert_same(f"kl {'ratio-weighted' if weighted else 'k3'}", ours[:2], theirs)
    # The other setting is not TRL's: the ratio's gradient is what the option changes.
    assert_differ("kl", ours[:2], run_trl(trainers(), batch, {}, {"use_bias_correction_kl": not weighted}, stale=True,
                                          beta=0.1, ref=ours[2]))


# --- deliberate differences: the stated cause alone reproduces TRL's number --------------------------


def test_entropy_bonus_default_differs_only_by_its_weights(trainers, batch, tiny_overrides):
    """grpo-cli weighs the bonus as the loss (SequenceMean for grpo); TRL takes a token mean. Switching
    only `algo.entropy_aggregation` to TokenMean gives TRL's number."""
    settings = {"entropy_coef": 0.05, "_entropy_bonus_enabled": True}
    theirs = run_trl(trainers(), batch, settings, stale=True)
    base = ["algo=grpo", "algo.beta=0", "algo.entropy_coef=0.05"]
    assert_differ("entropy default", run_grpo_cli(tiny_overrides, batch, base, stale=True)[:2], theirs)
    token = base + ["+algo.entropy_aggregation._target_=grpo_cli.algo.aggregation.TokenMean"]
    assert_same("entropy bonus token mean (grpo)", run_grpo_cli(tiny_overrides, batch, token, stale=True)[:2], theirs)


def test_bnpo_under_accumulation_is_the_mean_of_micro_batch_token_means(trainers, batch, tiny_overrides):
    """TRL's bnpo divides by each micro-batch's tokens, then averages over accumulation steps; grpo-cli's
    TokenMean divides by the optimiser batch's tokens. Normalising per micro-batch alone (grpo-cli run
    on each half, averaged) reproduces TRL's accumulated number."""
    halves = [torch.arange(0, 4), torch.arange(4, 8)]
    trainer = trainers()
    trainer.current_gradient_accumulation_steps = 2
    try:
        parts = [run_trl(trainer, batch, {"loss_type": "bnpo"}, stale=True, rows=h) for h in halves]
    finally:
        trainer.current_gradient_accumulation_steps = 1
    theirs = (sum(p[0] for p in parts), {n: sum(p[1][n] for p in parts) for n in parts[0][1]})
    token_mean = ["algo=grpo", "algo.beta=0", "algo.aggregation._target_=grpo_cli.algo.aggregation.TokenMean"]
    assert_differ("bnpo accumulation", run_grpo_cli(tiny_overrides, batch, token_mean, stale=True)[:2], theirs)
    ours = [run_grpo_cli(tiny_overrides, batch, token_mean, stale=True, rows=h)[:2] for h in halves]
    mean = (sum(o[0] for o in ours) / 2, {n: sum(o[1][n] for o in ours) / 2 for n in ours[0][1]})
    assert_same("bnpo, 2 accumulation steps", mean, theirs)


# --- advantages and reward aggregation (TRL's formulas, read from _generate_and_score_completions) ----


def trl_advantages(per_func: torch.Tensor, weights: torch.Tensor, scale: str, aggregation: str) -> torch.Tensor:
    """TRL 1.16's advantages from rewards_per_func [N, R], line for line, with TRL's own nanstd."""
    from trl.trainer.utils import nanstd

    unscorable = torch.isnan(per_func).all(dim=1)
    if aggregation == "sum_then_normalize":
        rewards = (per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
        if scale in ("group", "none"):
            std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
        else:
            std = nanstd(rewards).expand_as(rewards)
        adv = rewards - mean
        if scale != "none":
            adv = adv / (std + 1e-4)
    else:
        grouped = per_func.view(-1, G, per_func.shape[1])
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1, keepdim=True)
        reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, per_func.shape[1])
        rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        adv = (rewards - torch.nanmean(rewards)) / (nanstd(rewards).expand_as(rewards) + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def _rewards():
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(0, 2, (4 * G,), generator=gen).float()  # a 0/1 accuracy
    b = torch.rand(4 * G, generator=gen) * 0.2  # a small format reward
    return {"accuracy": a, "format": b}, {"accuracy": 1.0, "format": 0.5}


@pytest.mark.parametrize("scale,aggregation", [("group", "sum_then_normalize"), ("batch", "sum_then_normalize"),
                                               ("none", "sum_then_normalize"), ("group", "normalize_then_sum")])
def test_advantages_equal_trl_with_bessel_std(scale, aggregation):
    per, w = _rewards()
    scores = RewardResult(per["accuracy"] + 0.5 * per["format"], per)
    ours = Advantages(w, 1e-4, scale, ddof=1, aggregation=aggregation)(scores, G)
    theirs = trl_advantages(torch.stack(list(per.values()), 1), torch.tensor(list(w.values())), scale, aggregation)
    assert torch.allclose(ours, theirs, atol=1e-6), (ours, theirs)


def test_population_std_differs_from_trl_only_by_bessels_factor():
    """grpo-cli's default (ddof 0, the GRPO sources' std) is not TRL's; ddof 1 alone gives TRL's, and
    the two differ by sqrt((G-1)/G) exactly (eps 0)."""
    per, w = _rewards()
    scores = RewardResult(per["accuracy"] + 0.5 * per["format"], per)
    theirs = trl_advantages(torch.stack(list(per.values()), 1), torch.tensor(list(w.values())), "group",
                            "sum_then_normalize")
    assert not torch.allclose(Advantages(w, 1e-4, "group")(scores, G), theirs, atol=1e-3)
    assert torch.allclose(Advantages(w, 1e-4, "group", ddof=1)(scores, G), theirs, atol=1e-6)
    population, bessel = (Advantages(w, 0.0, "group", ddof=d)(scores, G) for d in (0, 1))
    assert torch.allclose(population * math.sqrt((G - 1) / G), bessel, atol=1e-6)


def test_adaptive_entropy_coefficient_follows_trl(trainers, batch):
    """The coefficient TRL applies and its updates, step by step, against EntropyControl fed the
    entropy TRL measured, with the target above then below it."""
    trainer = trainers()
    with torch.no_grad():
        attn = torch.cat([torch.ones_like(batch.prompt_ids), batch.mask.long()], 1)
        _, ent, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([batch.prompt_ids, batch.completion_ids], 1), attn, T, compute_entropy=True)
    entropy = float((ent * batch.mask).sum() / batch.mask.sum())
    for target in (entropy + 0.5, entropy - 0.5):
        args = dict(entropy_target=target, entropy_coef_delta=0.01, entropy_coef_min=0.0, entropy_coef_max=0.03)
        ours = EntropyControl(0.02, target, 0.01, 0.0, 0.03)
        settings = {"entropy_coef": 0.02, "use_adaptive_entropy": True, "_entropy_bonus_enabled": True,
                    "_last_world_entropy": math.inf, "_entropy_window_stats": None}
        for step in range(3):
            before = ours.coef
            applied = trainer.entropy_coef if trainer._last_world_entropy <= target else 0.0
            if step:
                assert before == pytest.approx(applied)
            run_trl(trainer, batch, settings if step == 0 else {k: getattr(trainer, k) for k in settings}, args,
                    stale=True)
            ours.update(torch.tensor(entropy))
            assert ours.value == pytest.approx(trainer.entropy_coef)
            assert ours.last_entropy == pytest.approx(trainer._last_world_entropy, abs=1e-5)
