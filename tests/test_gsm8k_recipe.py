"""The GSM8K recipe, offline: every code path of `grpo-train +recipe=gsm8k` with the model and
data swapped for a tiny local checkpoint and a local file in GSM8K's schema."""

from __future__ import annotations

import json
import random

import pytest
from omegaconf import OmegaConf

from examples.demo.arithmetic import write_jsonl
from grpo_cli import hub
from grpo_cli.learner.models import ModelLoadError, load_tokenizer
from grpo_cli.rollout.prompts import DataError, load_table
from grpo_cli.train import run
from tests.conftest import compose

ITEMS = ["apples", "marbles", "stickers", "books"]


def word_problems(n: int, seed: int) -> list[dict]:
    """Synthetic problems in GSM8K's schema: `question`, and `answer` = reasoning + `#### N`."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, item = rng.randint(2, 999), rng.randint(2, 999), rng.choice(ITEMS)
        rows.append({
            "question": f"Sam has {a:,} {item} and buys {b:,} more. How many {item} does Sam have now?",
            "answer": f"Sam has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}.\n#### {a + b:,}",
        })
    return rows


@pytest.fixture(scope="module")
def gsm8k_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gsm8k")
    return write_jsonl(word_problems(40, 0), d / "train.jsonl"), write_jsonl(word_problems(8, 1), d / "test.jsonl")


def recipe_overrides(tiny_model, gsm8k_files) -> list[str]:
    train, test = gsm8k_files
    return [
        "+recipe=gsm8k", f"model.path={tiny_model}", f"data.path={train}", f"data.eval_path={test}",
        # What a CPU and a 2-layer model need; everything else is the recipe as users run it.
        "sampler.max_tokens=16", "sampler.max_model_len=256", "sampler.enforce_eager=true",
        "+sampler.engine_kwargs.kv_cache_memory_bytes=268435456",
        "train.prompts_per_step=4", "train.micro_batch_size=8", "train.max_steps=2",
        "eval.every=1", "eval.max_rows=8", "eval.pass_k=2", "checkpoint.every=1",
        "logger.wandb_mode=offline", "logger.completions_every=1",
    ]


@pytest.mark.engine
def test_gsm8k_recipe_runs_end_to_end_offline(tiny_model, gsm8k_files, tmp_path, learner_device):
    cfg = compose(recipe_overrides(tiny_model, gsm8k_files) + [f"train.device={learner_device}"])
    assert cfg.data.use_chat_template and cfg.train.autocast_dtype == "bfloat16"
    run(cfg, run_dir=tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "reward/mean" in m]
    evals = [m for m in lines if "eval/accuracy" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert {"reward/correctness/mean", "reward/format/mean", "kl/mean"} <= set(steps[0])
    assert [m["step"] for m in evals] == [0, 1, 2] and all("eval/pass@2" in m for m in evals)
    assert (tmp_path / "checkpoints" / "step_1" / "config.json").exists()
    assert (tmp_path / "checkpoints" / "final" / "config.json").exists()
    # The prompts went through the chat template, with the recipe's instruction.
    sample = json.loads((tmp_path / "completions.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].startswith("<|im_start|>user\nSam has ")
    assert sample["prompt"].endswith("output the final answer after \"####\".<|im_end|>\n<|im_start|>assistant\n")
    assert {"reward/correctness", "reward/format", "advantage"} <= set(sample)


@pytest.mark.engine
def test_eval_only_mode_evaluates_a_checkpoint(tiny_model, gsm8k_files, tmp_path):
    cfg = compose(recipe_overrides(tiny_model, gsm8k_files) + ["eval_only=true"])
    accuracy = run(cfg, run_dir=tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["step"] == 0 and lines[0]["eval/accuracy"] == accuracy
    assert "eval/pass@2" in lines[0]
    assert not (tmp_path / "checkpoints").exists()


@pytest.fixture
def no_hub(monkeypatch):
    """The hub as it is on a machine without a network, whatever this machine has."""
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_unreachable_hub_dataset_is_one_line_naming_data_path(no_hub):
    with pytest.raises(DataError) as err:
        load_table("openai/gsm8k", "main", "train")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("data.path='openai/gsm8k': could not load split 'train'")
    assert msg.endswith("pass data.path=/path/to/file.jsonl in the same schema")


def test_unreachable_hub_model_is_one_line_naming_model_path(no_hub):
    cfg = OmegaConf.create({"path": "Qwen/Qwen2.5-0.5B-Instruct", "tokenizer": None, "trust_remote_code": False})
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer(cfg)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("model.path='Qwen/Qwen2.5-0.5B-Instruct': could not load")
    assert msg.endswith("pass model.path=/path/to/a/save_pretrained/dir")


def test_local_file_of_unknown_type_is_a_clear_error(tmp_path):
    bad = tmp_path / "train.txt"
    bad.write_text("hello")
    with pytest.raises(DataError, match=r"data.path='.*train.txt': unsupported file type '.txt'; use one of .jsonl"):
        load_table(str(bad))
