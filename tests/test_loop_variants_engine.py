"""Loop-side variants through the real vLLM engine on the tiny model: LoRA, reference refresh, KL
watch, batch filters."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_cli.learner.learner import RolloutBatch
from grpo_cli.rollout.colocated import ColocatedSampler
from grpo_cli.state.export import save_checkpoint
from grpo_cli.train import run
from tests.conftest import compose, make_learner

pytestmark = pytest.mark.engine

PROMPTS = ["12+34=", "7+8=", "99+1=", "hello"]
# A reward the random tiny model earns sometimes, so that groups have signal and the policy moves.
SIGNAL = ["~reward.funcs.correct", "+reward.funcs.chars.fn=tests.test_loop_variants_engine.distinct_chars",
          "reward.accuracy=chars"]


def distinct_chars(prompts, completions, **_):
    return [float(len(set(c))) for c in completions]


def test_lora_trains_adapters_only_and_the_engine_runs_the_merged_model(tiny_overrides, tiny_model, tmp_path):
    cfg = compose(tiny_overrides + ["model.lora.r=4", "model.lora.alpha=8", "optim.lr=5e-2", "algo.beta=0.04",
                                    "train.device=cpu"])
    tok = AutoTokenizer.from_pretrained(tiny_model)
    learner = make_learner(cfg, total_optim_steps=10)
    base = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_model).state_dict().items()}
    trainable = [n for n, p in learner.policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    sampler = ColocatedSampler(cfg.sampler, cfg.model)
    sampler.load_weights(learner.weights())
    ids = tok(PROMPTS, add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # train, push the merged weights, repeat
        r = sampler.generate(ids, n=4)
        adv = torch.randn(len(r.completion_ids), generator=g)
        learner.train_step(RolloutBatch.build(r.prompt_ids, r.completion_ids, r.logprobs, adv, tok.pad_token_id))
        sampler.load_weights(learner.weights())

    merged = copy.deepcopy(learner.peft).merge_and_unload().eval()  # peft's own merge: the reference answer
    weights = dict(learner.weights())
    assert set(weights) == set(merged.state_dict())  # the base model's names, as vLLM's reload wants
    moved = max((merged.state_dict()[k] - base[k]).abs().max().item() for k in base)
    assert moved > 1e-3, "the adapters did not train"
    for n, p in learner.policy.named_parameters():  # the base weights stay frozen
        if ".base_layer." in n:
            assert torch.equal(p, base[n.replace(".base_layer.", ".")]), n

    # Sampled-token log-probs: the engine's vs the merged model's forward on the same tokens.
    r = sampler.generate(ids, n=4)
    batch = RolloutBatch.build(r.prompt_ids, r.completion_ids, r.logprobs, torch.zeros(len(r.texts)), tok.pad_token_id)
    with torch.no_grad():
        merged_logp = learner.completion_logprobs(merged, batch)  # [N, T]
    diff = ((merged_logp - batch.sampler_logp).abs() * batch.completion_mask).max().item()
    assert diff <= 1e-4, f"engine vs merged model log-prob difference {diff}"

    # Greedy continuations: vLLM vs transformers' generate from the merged model.
    greedy = sampler.generate(ids, n=1, temperature=0.0, max_tokens=8)
    for prompt, completion in zip(ids, greedy.completion_ids):
        out = merged.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              do_sample=False, max_new_tokens=8, use_cache=True)
        expected = out[0, len(prompt):].tolist()
        assert completion == expected[: len(completion)] and len(completion) in (len(expected), 8)

    # Checkpoint: the adapter (loads onto the base with peft) and, on request, the merged model.
    path = save_checkpoint(learner.checkpoint_model, tok, tmp_path / "ckpt", merged=True)
    assert (path / "adapter_config.json").exists() and not (path / "model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), path).merge_and_unload()
    from_disk = AutoModelForCausalLM.from_pretrained(path / "merged")
    for k, v in merged.state_dict().items():
        assert torch.allclose(reloaded.state_dict()[k], v, atol=1e-6), k
        assert torch.equal(from_disk.state_dict()[k], v), k


def test_lora_run_saves_adapter_and_merged_model(tiny_overrides, tmp_path):
    cfg = compose(tiny_overrides + ["model.lora.r=4", "checkpoint.merged=true", "train.device=cpu"])
    run(cfg, run_dir=tmp_path)
    final = tmp_path / "checkpoints" / "final"
    assert (final / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(final / "merged")


def test_reference_refresh_every_step_makes_the_next_kl_zero(tiny_overrides, tmp_path):
    """With alpha = 1 and one optimiser step per batch, the reference after step 1 is the policy
    that samples and is scored at step 2, so step 2's KL is exactly 0; without refresh it is not."""
    kls = {}
    for every in (0, 1):
        cfg = compose(tiny_overrides + SIGNAL + ["algo.beta=0.04", "optim.lr=1e-2", f"algo.ref_refresh_every={every}",
                                        "train.device=cpu", "checkpoint.final=false"])
        run(cfg, run_dir=tmp_path / str(every))
        steps = [json.loads(x) for x in (tmp_path / str(every) / "metrics.jsonl").read_text().splitlines() if "reward/mean" in x]
        kls[every] = [m["kl/mean"] for m in steps]
        assert [m.get("ref/refreshed") for m in steps] == ([1.0, 1.0] if every else [None, None])
    assert kls[0][0] == kls[1][0] == 0.0  # step 1: the policy has not moved yet
    assert kls[0][1] > 1e-6 and abs(kls[1][1]) <= 1e-7, kls


def test_kl_watch_in_the_loop_adapts_beta_and_stops_with_a_checkpoint(tiny_overrides, tmp_path):
    from grpo_cli.state.stop import RunStopped

    cfg = compose(tiny_overrides + SIGNAL + ["algo.beta=0.04", "optim.lr=1e-2", "train.max_steps=3", "algo.kl_limit=1e-9",
                                    "algo.kl_action=adapt", "algo.kl_horizon=16", "train.device=cpu", "checkpoint.final=false"])
    run(cfg, run_dir=tmp_path / "adapt")
    steps = [json.loads(x) for x in (tmp_path / "adapt" / "metrics.jsonl").read_text().splitlines() if "reward/mean" in x]
    betas = [m["beta"] for m in steps]
    # KL 0 at step 1 (below the limit): beta * (1 - 0.2 * 16 / 16); above it at step 2: * (1 + 0.2).
    assert betas[0] == 0.04 and steps[0]["kl/mean"] == 0.0 and betas[1] == pytest.approx(0.04 * 0.8)
    assert steps[1]["kl/mean"] > 1e-9
    assert betas[2] == pytest.approx(betas[1] * 1.2)

    cfg = compose(tiny_overrides + SIGNAL + ["algo.beta=0.04", "optim.lr=1e-2", "train.max_steps=3", "algo.kl_limit=1e-9",
                                    "algo.kl_action=stop", "train.device=cpu"])
    with pytest.raises(RunStopped, match=r"^stopped after step 2: kl/mean=\S+ passed algo.kl_limit=1e-09 at step 2 "
                                         r"\(algo.kl_action=stop\); checkpoint \S+step_2; continue with"):
        run(cfg, run_dir=tmp_path / "stop")
    AutoModelForCausalLM.from_pretrained(tmp_path / "stop" / "checkpoints" / "step_2")
    assert len((tmp_path / "stop" / "metrics.jsonl").read_text().splitlines()) == 3  # eval 0, steps 1, 2


def _steps(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "reward/mean" in x]


def test_skip_zero_std_spends_no_learner_step_on_groups_without_signal(tiny_overrides, tiny_model, tmp_path):
    """The random tiny model never solves arithmetic: every group's rewards are all 0."""
    cfg = compose(tiny_overrides + ["filter=skip_zero_std", "algo.beta=0.04", "train.device=cpu"])
    run(cfg, run_dir=tmp_path)
    for m in _steps(tmp_path):
        assert m["frac_zero_std"] == 1.0 and m["filter/groups_drawn"] == 4 and m["filter/groups_trained"] == 0
        assert "loss" not in m and "kl/mean" not in m  # the learner did not run
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints" / "final").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_dynamic_sampling_in_the_loop_draws_until_its_budget_and_logs_it(tiny_overrides, tmp_path):
    # No group ever has signal: every step draws 1 + max_extra_draws batches of B = 4 prompts.
    cfg = compose(tiny_overrides + ["filter=dynamic_sampling", "algo.batch_filter.max_extra_draws=2", "train.device=cpu",
                                    "checkpoint.final=false"])
    run(cfg, run_dir=tmp_path / "none")
    assert [(m["filter/groups_drawn"], m["filter/groups_trained"]) for m in _steps(tmp_path / "none")] == [(12, 0)] * 2
    # Most groups have signal: draws stop once B = 4 informative groups exist; B of them are trained on.
    cfg = compose(tiny_overrides + SIGNAL + ["filter=dynamic_sampling", "algo.batch_filter.max_extra_draws=2",
                                             "train.device=cpu", "checkpoint.final=false"])
    run(cfg, run_dir=tmp_path / "some")
    for m in _steps(tmp_path / "some"):
        drawn = m["filter/groups_drawn"]
        informative = round(drawn * (1 - m["frac_zero_std"]))
        assert drawn in (4, 8, 12) and (informative >= 4 or drawn == 12)
        assert m["filter/groups_trained"] == min(4, informative) > 0 and "loss" in m


WALL_CLOCK = ("time/", "tokens_per_s")


def test_resume_restores_the_lora_adapter_the_refreshed_reference_and_the_adapted_beta(tiny_overrides, tmp_path):
    """3 steps straight vs 2 steps + resume: step 3's numbers and the final adapter are identical."""
    variant = SIGNAL + ["model.lora.r=4", "optim.lr=5e-2", "algo.beta=0.04", "algo.ref_refresh_every=2",
                        "algo.ref_refresh_alpha=0.5", "algo.kl_limit=1e-3", "algo.kl_action=adapt", "algo.kl_horizon=16",
                        "checkpoint.every=1", "train.device=cpu", "logger.completions_every=0"]

    def steps(run_dir):
        return [{k: v for k, v in m.items() if not k.startswith(WALL_CLOCK)} for m in _steps(run_dir)]

    straight, split = tmp_path / "straight", tmp_path / "split"
    run(compose(tiny_overrides + variant + ["train.max_steps=3"]), run_dir=straight)
    run(compose(tiny_overrides + variant + ["train.max_steps=2"]), run_dir=split)
    run(compose(tiny_overrides + variant + ["train.max_steps=3", f"resume={split}"]), run_dir=split)
    a, b = steps(straight), steps(split)
    assert [m["step"] for m in b] == [1, 2, 3] and a == b
    assert a[1]["ref/refreshed"] == 1.0 and a[2]["beta"] != a[0]["beta"]  # both states mattered
    final_a = load_file(straight / "checkpoints" / "final" / "adapter_model.safetensors")
    final_b = load_file(split / "checkpoints" / "final" / "adapter_model.safetensors")
    assert final_a.keys() == final_b.keys() and all(torch.equal(final_a[k], final_b[k]) for k in final_a)
