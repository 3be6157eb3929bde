"""Tools through the real vLLM engine: a tiny model warm-started to call `multiply` (the demo's
task) writes multi-turn rollouts; the learner scores exactly the tokens the sampler saw across
turns; faults are tool messages; environments own a reward; runs train, log and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import compose, make_learner

pytestmark = pytest.mark.engine


@pytest.fixture(scope="session")
def tool_model(tmp_path_factory) -> Path:
    """The tool-capable tiny model after a short warm start that calls `multiply` on most prompts."""
    from examples.demo.arithmetic import sft_warm_start
    from examples.demo.tiny import save_tiny
    from examples.demo.tool_task import mark_tool_use, multiplication_rows, tool_example

    root = tmp_path_factory.mktemp("tool_model")
    base = save_tiny(root / "base", tools=True, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                     num_kv_heads=1, seed=0)
    rows = mark_tool_use(multiplication_rows([(a, b) for a in range(10, 40) for b in range(10, 40)]), 0.9)
    sft_warm_start(base, root / "sft", rows, steps=150, batch_size=32, lr=1e-2, example=tool_example)  # ~8 s
    return root / "sft"


@pytest.fixture(scope="session")
def tool_data(tmp_path_factory) -> Path:
    from examples.demo.arithmetic import write_jsonl
    from examples.demo.tool_task import multiplication_rows

    pairs = [(a, b) for a in range(40, 60) for b in range(40, 60)]
    return write_jsonl(multiplication_rows(pairs[:200]), tmp_path_factory.mktemp("tool_data") / "mul.jsonl")


@pytest.fixture(scope="session")
def tool_overrides(tool_model, tool_data) -> list[str]:
    return [
        "model=tiny-local", f"model.path={tool_model}", "model.dtype=float32", "data=arithmetic",
        f"data.path={tool_data}", "data.eval_holdout=8", "data.use_chat_template=true", "reward=arithmetic",
        "sampler=vllm-cpu", "sampler.max_tokens=128", "sampler.max_model_len=192", "logger=none",
        "train.prompts_per_step=4", "algo.group_size=4", "train.micro_batch_size=16", "train.max_steps=2",
        "optim.lr=1e-3", "eval.max_rows=8", "tools.funcs=[examples.demo.tool_task.multiply]", "tools.max_turns=2",
    ]


def _loop(cfg):
    from grpo_cli.learner.models import load_tokenizer
    from grpo_cli.rollout.colocated import ColocatedSampler
    from grpo_cli.rollout.prompts import PromptFormatter
    from grpo_cli.tools.loop import make_generation
    from grpo_cli.tools.registry import Toolbox

    tok = load_tokenizer(cfg.model)
    toolbox = Toolbox.from_config(cfg.tools)
    fmt = PromptFormatter(cfg.data, tok, toolbox.schemas)
    sampler = ColocatedSampler(cfg.sampler, cfg.model)
    return make_generation(cfg.tools, toolbox, sampler, fmt, tok, cfg.sampler), sampler, fmt, tok


def _batch(fmt, rows):
    import datasets

    from grpo_cli.rollout.prompts import as_batch

    return as_batch(datasets.Dataset.from_list(rows), fmt, list(range(len(rows))))


ROWS = [{"prompt": f"{a}*{b}=", "answer": str(a * b)} for a, b in [(41, 52), (47, 45), (58, 43), (50, 49)]]


def _seeds(step: int, n: int = 4) -> list[int]:
    from grpo_cli.rollout.sampler import rollout_seed

    return [rollout_seed(0, step, i) for i in range(n)]


def test_multi_turn_rollouts_are_token_exact_and_the_learner_agrees_across_turns(tool_overrides):
    cfg = compose(tool_overrides + ["algo.beta=0"])
    generate, sampler, fmt, tok = _loop(cfg)
    learner = make_learner(cfg, total_optim_steps=4)
    sampler.load_weights(learner.weights())
    r = generate(_batch(fmt, ROWS), 4, seeds=_seeds(1))
    assert sum(r.tools.used) >= 8, r.texts  # the warm start calls the tool on most prompts
    assert sum(0 in mask for mask in r.tool_mask) >= 4 and r.tools.dropped < sum(r.tools.used)
    for ids, mask, lp, messages, prompt in zip(r.completion_ids, r.tool_mask, r.logprobs, r.messages, r.prompt_ids):
        assert len(ids) == len(mask) == len(lp)
        if 0 not in mask:
            continue
        # The rollout is turn 1 | tool result | turn 2, and the tool's tokens are exactly what the
        # chat template writes for the tool message after the assistant's turn.
        start = mask.index(0)
        end = start + mask[start:].index(1) if 1 in mask[start:] else len(mask)
        assert tok.decode(ids[start:end]) == f"\n<|im_start|>tool\n{messages[1]['content']}<|im_end|>\n<|im_start|>assistant\n"
        assert messages[0]["tool_calls"][0]["function"]["name"] == "multiply" and messages[1]["role"] == "tool"
        assert all(x == 0.0 for x in lp[start:end])
        assert tok.decode(prompt).endswith("<|im_start|>assistant\n") and "tools: multiply" in tok.decode(prompt)
    # The learner's log-probs of every sampled token, turn 2 included (its context holds the tool's tokens).
    from grpo_cli.learner.learner import RolloutBatch

    batch = RolloutBatch.build(r.prompt_ids, r.completion_ids, r.logprobs, torch.zeros(len(r.texts)), tok.pad_token_id,
                               r.finish_reasons, r.tool_mask)
    with torch.no_grad():
        logp = learner.completion_logprobs(learner.policy, batch.to(learner.device)).cpu()  # [N, T]
    drift = ((logp - batch.sampler_logp).abs() * batch.completion_mask)  # [N, T], tool tokens excluded
    later = torch.zeros_like(batch.completion_mask, dtype=torch.bool)
    for i, mask in enumerate(r.tool_mask):
        if 0 in mask:
            later[i, mask.index(0):len(mask)] = torch.tensor(mask[mask.index(0):]) == 1
    assert later.any()  # tokens of a turn after a tool result
    print(f"sampler/learner drift: max {drift.max().item():.2e}, on turns after a tool result {drift[later].max().item():.2e}")
    assert drift.max().item() < 1e-5 and drift[later].max().item() < 1e-5


def test_turn_seeds_make_multi_turn_rollouts_reproducible(tool_overrides):
    cfg = compose(tool_overrides)
    generate, sampler, fmt, _ = _loop(cfg)
    a = generate(_batch(fmt, ROWS), 4, seeds=_seeds(3))
    b = generate(_batch(fmt, ROWS[::-1]), 4, seeds=_seeds(3)[::-1])  # other order, same seeds per prompt
    flip = lambda xs: [x for g in range(3, -1, -1) for x in xs[g * 4:(g + 1) * 4]]  # noqa: E731
    assert a.completion_ids == flip(b.completion_ids) and a.tool_mask == flip(b.tool_mask)


def test_a_run_with_failing_tools_goes_on_and_counts_the_failures(tool_overrides, tmp_path):
    from grpo_cli.train import run

    cfg = compose(tool_overrides + ["tools.funcs=[tests.flaky_tools.multiply]", "tools.timeout_s=0.5",
                                    "eval.max_rows=4"])
    run(cfg, run_dir=tmp_path / "faults")  # every call of `multiply` raises or times out: the run goes on
    steps = [m for m in map(json.loads, (tmp_path / "faults" / "metrics.jsonl").read_text().splitlines()) if "tools/calls" in m]
    assert len(steps) == 2 and all(m["tools/calls"] > 0 and m["tools/failures"] == m["tools/calls"] for m in steps)
    assert sum(m.get("tools/multiply/calls", 0) for m in steps) > 0
    assert all(m.get("tools/multiply/failures", 0) == m.get("tools/multiply/calls", 0) for m in steps)
    assert {"tools/used_frac", "tools/turns_mean", "tools/dropped", "time/tools_s"} <= steps[0].keys()


def test_a_tool_that_raises_or_hangs_is_an_error_message_for_the_model(tool_overrides):
    cfg = compose(tool_overrides + ["tools.funcs=[tests.flaky_tools.multiply]", "tools.timeout_s=0.5"])
    generate, sampler, fmt, _ = _loop(cfg)
    r = generate(_batch(fmt, ROWS), 4, seeds=_seeds(2))
    told = [m[1]["content"] for m in r.messages if len(m) > 1 and m[1]["name"] == "multiply"]
    assert "{'error': 'RuntimeError: the multiplier is down'}" in told
    assert "{'error': 'multiply timed out after 0.5 s'}" in told
    assert r.tools.failures["multiply"] == r.tools.calls["multiply"] >= 2


class MultiplyEnv:
    """An environment: the model multiplies through it, and it knows whether the answer was right."""

    def reset(self, **row) -> str:
        self.answer, self.used = row["answer"], 0
        return " Use the tool."

    def multiply(self, a: int, b: int) -> int:
        """
        Multiply two integers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        self.used += 1
        return a * b

    def get_reward(self) -> float:
        return float(self.used > 0)


def test_an_environment_per_rollout_gives_its_reward(tool_overrides, tmp_path):
    from grpo_cli.train import run

    cfg = compose(tool_overrides + ["tools.funcs=[]", "tools.environment=tests.test_tools_engine.MultiplyEnv"])
    run(cfg, run_dir=tmp_path / "env")
    steps = [m for m in map(json.loads, (tmp_path / "env" / "metrics.jsonl").read_text().splitlines()) if "tools/calls" in m]
    assert "reward/MultiplyEnv/mean" in steps[0] and "reward/correct/mean" in steps[0]
    used = [m["tools/used_frac"] for m in steps]
    assert [m["reward/MultiplyEnv/mean"] for m in steps] == pytest.approx(used)  # its reward: the tool was used


def test_a_run_with_tools_trains_logs_and_resumes_exactly(tool_overrides, tmp_path):
    from grpo_cli.train import run

    args = tool_overrides + ["train.max_steps=3", "checkpoint.every=1", "eval.every=0", "algo.beta=0.04"]
    run(compose(args), run_dir=tmp_path / "straight")
    run(compose(args + ["train.max_steps=2"]), run_dir=tmp_path / "cut")
    run(compose(args + [f"resume={tmp_path / 'cut'}"]), run_dir=tmp_path / "cut", overrides=["train.max_steps=3"])
    read = lambda d: [m for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in m]  # noqa: E731
    straight, resumed = read(tmp_path / "straight"), read(tmp_path / "cut")
    assert straight[-1]["step"] == resumed[-1]["step"] == 3
    for key in ("loss", "reward/mean", "tools/calls", "tools/used_frac", "completion_len/mean", "kl/mean"):
        assert straight[-1][key] == resumed[-1][key], key
    assert straight[0]["logprob_drift/max"] < 1e-5  # fp32: the learner sees the sampler's tokens across turns
    evals = [m for m in map(json.loads, (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines())
             if "eval/tools/used_frac" in m]
    assert evals and 0.0 <= evals[0]["eval/tools/used_frac"] <= 1.0
