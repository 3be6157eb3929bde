"""Through the real vLLM engine on a tiny model: weight sync is exact, GRPO moves the policy, and a
run leaves every file and metric it promises."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_cli.learner.learner import RolloutBatch
from grpo_cli.rollout.colocated import ColocatedSampler
from grpo_cli.train import run
from tests.conftest import compose, make_learner

pytestmark = pytest.mark.engine

PROMPTS = ["12+34=", "7+8=", "99+1=", "hello"]


def test_weight_sync_is_exact_after_training_steps(tiny_overrides, tiny_model, learner_device):
    cfg = compose(tiny_overrides + ["algo.beta=0.04", "optim.lr=1e-2", f"train.device={learner_device}"])
    tok = AutoTokenizer.from_pretrained(tiny_model)
    learner = make_learner(cfg, total_optim_steps=10)
    sampler = ColocatedSampler(cfg.sampler, cfg.model)
    sampler.load_weights(learner.weights())
    ids = tok(PROMPTS, add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # train, sync, repeat: each sync must leave the engine equal to the learner
        r = sampler.generate(ids, n=4)
        adv = torch.randn(len(r.completion_ids), generator=g)
        learner.train_step(RolloutBatch.build(r.prompt_ids, r.completion_ids, r.logprobs, adv, tok.pad_token_id))
        sampler.load_weights(learner.weights())

    # Sampled-token log-probs: the engine's vs the learner's forward on the same tokens.
    r = sampler.generate(ids, n=4)
    batch = RolloutBatch.build(r.prompt_ids, r.completion_ids, r.logprobs, torch.zeros(len(r.texts)), tok.pad_token_id)
    with torch.no_grad():
        learner_logp = learner.completion_logprobs(learner.policy, batch.to(learner.device)).cpu()  # [N, T]
    diff = ((learner_logp - batch.sampler_logp).abs() * batch.completion_mask).max().item()
    assert diff <= 1e-4, f"sampler vs learner log-prob difference {diff}"

    # Greedy continuations: vLLM vs transformers' generate from the learner's weights.
    greedy = sampler.generate(ids, n=1, temperature=0.0, max_tokens=8)
    learner.policy.eval()
    for prompt, completion in zip(ids, greedy.completion_ids):
        prompt_t = torch.tensor([prompt], device=learner.device)
        out = learner.policy.generate(prompt_t, attention_mask=torch.ones_like(prompt_t),
                                      do_sample=False, max_new_tokens=8, use_cache=True)
        expected = out[0, len(prompt):].tolist()
        assert completion == expected[: len(completion)] and len(completion) in (len(expected), 8)
    learner.policy.train()


def first_is_target(prompts, completions, **_):
    """Reward one specific first character (the test module sets TARGET)."""
    return [1.0 if c[:1] == TARGET else 0.0 for c in completions]


TARGET = "5"


def _first_token_prob(model_dir, tok, prompt, token):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])).logits[0, -1]
    return logits.softmax(-1)[tok.convert_tokens_to_ids(token)].item()


def test_grpo_raises_the_probability_of_the_rewarded_first_token(tiny_overrides, tiny_model, tmp_path, learner_device):
    cfg = compose(tiny_overrides + [f"train.device={learner_device}",
        "~reward.funcs.correct", "+reward.funcs.first.fn=tests.test_engine.first_is_target", "reward.accuracy=first",
        "train.max_steps=6", "train.prompts_per_step=8", "algo.group_size=8", "optim.lr=5e-3",
        "sampler.temperature=1.5", "algo.beta=0.0",
    ])
    tok = AutoTokenizer.from_pretrained(tiny_model)
    before = _first_token_prob(tiny_model, tok, "12+34=", TARGET)
    run(cfg, run_dir=tmp_path)
    after = _first_token_prob(tmp_path / "checkpoints" / "final", tok, "12+34=", TARGET)
    rewards = [json.loads(x)["reward/mean"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "reward/mean" in x]
    assert after > 3 * before, (before, after, rewards)
    assert sum(rewards[3:]) > sum(rewards[:3]), rewards  # more of it sampled in the last 3 steps than the first 3


REQUIRED_KEYS = [
    "step", "reward/mean", "reward/correct/mean", "advantage/std", "frac_zero_std", "kl/mean", "loss", "clip_frac",
    "grad_norm", "lr", "completion_len/mean", "truncated_frac", "time/sample_s", "time/reward_s",
    "time/learner_s", "time/sync_s", "tokens_per_s", "logprob_drift/max",
]


def test_run_dir_has_every_file_and_metric(tiny_overrides, tmp_path, learner_device):
    cfg = compose(tiny_overrides + ["logger.wandb_mode=offline", "logger.completions_every=1", "eval.pass_k=2",
                                    f"train.device={learner_device}"])
    run(cfg, run_dir=tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "reward/mean" in m]
    evals = [m for m in lines if "eval/accuracy" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for key in REQUIRED_KEYS:
        assert key in steps[0], key
    assert [m["step"] for m in evals] == [0, 2] and "eval/pass@2" in evals[0]
    assert steps[0]["logprob_drift/max"] <= 1e-4
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "completions.jsonl").exists()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    final = tmp_path / "checkpoints" / "final"
    AutoModelForCausalLM.from_pretrained(final)  # transformers loads it
    cfg.model.path = str(final)
    r = ColocatedSampler(cfg.sampler, cfg.model).generate([[1, 2, 3]], n=2)  # and so does vLLM
    assert len(r.texts) == 2


def test_missing_dataset_column_is_one_line_from_the_cli(tiny_overrides, tmp_path):
    args = [o for o in tiny_overrides] + ["data.prompt_column=question", f"hydra.run.dir={tmp_path / 'run'}"]
    out = subprocess.run([sys.executable, "-m", "grpo_cli", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "data.prompt_column='question' is not a column of the training data; columns: prompt, answer" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow  # ~40 s; sweeps through the CLI stay in the default suite (tests/test_sweeps.py)
def test_a_sweep_runs_every_combination(tiny_overrides, tmp_path):
    base = [o for o in tiny_overrides if not o.startswith(("algo.group_size", "train.max_steps"))]
    args = ["-m", *base, "algo.group_size=2,4", "algo.beta=0,0.04", "train.max_steps=1",
            "checkpoint.final=false", f"hydra.sweep.dir={tmp_path}"]
    out = subprocess.run([sys.executable, "-m", "grpo_cli", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in runs] == ["0", "1", "2", "3"]
    seen = set()
    for r in runs:
        cfg = OmegaConf.load(r / "config.yaml")
        seen.add((cfg.algo.group_size, cfg.algo.beta))
        steps = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines() if "reward/mean" in x]
        assert len(steps) == 1 and ("kl/mean" in steps[0]) == (cfg.algo.beta > 0)
    assert seen == {(2, 0.0), (2, 0.04), (4, 0.0), (4, 0.04)}


def test_seeded_requests_survive_a_split_prefill_on_the_cpu(tiny_model):
    """More prompt tokens than a step's budget (4,096): vLLM splits a prefill and rewinds the seeded
    request's generator, which a CPU generator cannot do; the engine must not die
    (grpo_cli/rollout/sampler.py, cpu_prefill_args). Crashed before with "CPU Generator does not use offset"."""
    cfg = compose(["model=tiny-local", f"model.path={tiny_model}", "model.dtype=float32", "sampler=vllm-cpu",
                   "data.path=unused"])
    prompts = [[(i * 7 + k) % 90 + 3 for k in range(150)] for i in range(64)]  # 9,600 prompt tokens
    r = ColocatedSampler(cfg.sampler, cfg.model).generate(prompts, n=8, max_tokens=4,
                                                           seeds=[1000 + 97 * i for i in range(64)])
    assert len(r.completion_ids) == 512 and all(1 <= len(c) <= 4 for c in r.completion_ids)
