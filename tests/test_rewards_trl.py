"""Rewards written for TRL's GRPOTrainer work unchanged, on standard and conversational datasets.

The reward functions below are written exactly as TRL's documentation writes them (GRPOTrainer
docs, "Using a custom reward function"); they are called with keyword arguments `prompts=`,
`completions=`, `completion_ids=` and every dataset column, as TRL's `_calculate_rewards` does.
"""

from __future__ import annotations

import copy
import json
import re

import datasets
import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from grpo_cli.rewards import Rewards, completion_text
from grpo_cli.rewards.gsm8k import Correctness
from grpo_cli.rollout.prompts import DataError, PromptFormatter, as_batch
from grpo_cli.rollout.sampler import Rollouts
from grpo_cli.train import run
from tests.conftest import compose


# --- TRL's documented examples, verbatim --------------------------------------------------------
def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def format_reward_func(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def reward_func(completions, ground_truth, **kwargs):
    # Regular expression to capture content inside \boxed{}
    matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    # Reward 1 if the content is the same as the ground truth, 0 otherwise
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]


def accuracy(completions, solution, **kwargs):
    """The issue's example signature: a conversational accuracy reward on a `solution` column."""
    return [1.0 if c[0]["content"].strip() == s else 0.0 for c, s in zip(completions, solution)]


def seen(prompts, completions, completion_ids, trainer_state=None, **kwargs):
    """Records exactly what it was called with."""
    seen.calls.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **kwargs})
    return [float(len(ids)) for ids in completion_ids]


seen.calls = []
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def _fmt(tok, **kw):
    cfg = {"prompt_column": "prompt", "prompt_template": "{prompt}", "system_prompt": None, "use_chat_template": True}
    return PromptFormatter(OmegaConf.create(cfg | kw), tok)


def _rollouts(texts, tok):
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    return Rollouts([[1]] * len(texts), ids, texts, ["stop"] * len(texts), [[0.0] * len(i) for i in ids])


def _rewards(**funcs):
    return Rewards({name: (fn, 1.0) for name, fn in funcs.items()})


def test_standard_dataset_trl_rewards_score_right(tok):
    table = datasets.Dataset.from_list([{"prompt": "Solve 1+1.", "ground_truth": "2"},
                                        {"prompt": "Solve 2+3.", "ground_truth": "5"}])
    batch = as_batch(table, _fmt(tok, use_chat_template=False)).repeat(2)
    texts = [r"so \boxed{2}", "it is 2", r"\boxed{5}", r"\boxed{6} is twenty chars"]
    scores = _rewards(acc=reward_func, len=reward_len)(batch, _rollouts(texts, tok))
    assert scores.per_reward["acc"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert scores.per_reward["len"].tolist() == [-abs(20 - len(t)) for t in texts]
    assert scores.total.tolist() == [a + b for a, b in zip(scores.per_reward["acc"].tolist(), scores.per_reward["len"].tolist())]


def test_rewards_get_keyword_arguments_as_trl_passes_them(tok):
    table = datasets.Dataset.from_list([{"prompt": "7+8=", "answer": "15", "level": 2}])
    batch = as_batch(table, _fmt(tok, use_chat_template=False)).repeat(2)
    rollouts = _rollouts(["15", "1"], tok)
    seen.calls.clear()
    scores = _rewards(seen=seen)(batch, rollouts)
    call = seen.calls[0]
    assert call["prompts"] == ["7+8=", "7+8="] and call["completions"] == ["15", "1"]
    assert call["completion_ids"] == rollouts.completion_ids
    assert call["answer"] == ["15", "15"] and call["level"] == [2, 2]
    assert "prompt" not in call  # like TRL: the prompt column arrives as `prompts`, not as a column
    assert scores.total.tolist() == [2.0, 1.0]


CHAT_ROWS = [
    {"prompt": [{"role": "user", "content": "Largest of 3, 9?"}], "solution": "9"},
    {"prompt": [{"role": "system", "content": "Answer with a number."},
                {"role": "user", "content": "Largest of 4, 2?"}], "solution": "4"},
]


def test_conversational_dataset_prompts_and_completions_are_messages(tok):
    batch = as_batch(datasets.Dataset.from_list(CHAT_ROWS), _fmt(tok, system_prompt="Be brief."))
    assert batch.conversational
    # The config's system prompt is added where the data has none; the data's own one wins.
    assert batch.prompts[0] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nLargest of 3, 9?"
                                "<|im_end|>\n<|im_start|>assistant\n")
    assert batch.prompts[1].startswith("<|im_start|>system\nAnswer with a number.<|im_end|>\n<|im_start|>user\n")
    assert "Be brief." not in batch.prompts[1]

    group = batch.repeat(2)
    texts = ["9", "3", "<think>4>2</think><answer>4</answer>", " 4 "]
    seen.calls.clear()
    scores = _rewards(acc=accuracy, fmt=format_reward_func, seen=seen)(group, _rollouts(texts, tok))
    assert scores.per_reward["acc"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert scores.per_reward["fmt"].tolist() == [0.0, 0.0, 1.0, 0.0]
    call = seen.calls[0]
    assert call["prompts"][0] == CHAT_ROWS[0]["prompt"] and call["prompts"][2] == CHAT_ROWS[1]["prompt"]
    assert call["completions"][2] == [{"role": "assistant", "content": texts[2]}]
    # Our own rewards read both forms.
    assert completion_text(call["completions"][1]) == "3"
    assert Correctness(mode="flexible", answer_column="solution")(**{k: call[k] for k in ("prompts", "completions")},
                                                                  solution=call["solution"]) == [1.0, 0.0, 1.0, 1.0]


def test_conversational_data_uses_the_chat_template_whatever_use_chat_template_says(tok):
    """As in TRL: data.use_chat_template is for plain-text prompts; chat messages always need the template."""
    batch = as_batch(datasets.Dataset.from_list(CHAT_ROWS), _fmt(tok, use_chat_template=False))
    assert batch.prompts[0] == tok.apply_chat_template(CHAT_ROWS[0]["prompt"], tokenize=False, add_generation_prompt=True)
    assert batch.prompts[0].endswith("<|im_start|>assistant\n")


def test_conversational_data_without_a_chat_template_is_a_clear_error(tok):
    tok = copy.deepcopy(tok)
    tok.chat_template = None
    with pytest.raises(DataError, match=r"data.prompt_column='prompt' holds chat messages, which need a chat "
                                        r"template: the tokenizer of model.path has none"):
        as_batch(datasets.Dataset.from_list(CHAT_ROWS), _fmt(tok, use_chat_template=True))


def first_char_is_digit(completions, **kwargs):
    """A conversational TRL-style reward for the tiny end-to-end run."""
    return [1.0 if completion[0]["content"][:1].isdigit() else 0.0 for completion in completions]


@pytest.mark.engine
def test_conversational_run_with_trl_rewards_end_to_end(tiny_overrides, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"{a}+{b}="}], "solution": str(a + b)}
            for a in range(10, 30) for b in range(3)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose(tiny_overrides + [
        f"data.path={data}", "data.use_chat_template=true", "data.system_prompt=Add.", "~reward.funcs.correct",
        "+reward.funcs.digit.fn=tests.test_rewards_trl.first_char_is_digit",
        "+reward.funcs.acc.fn=tests.test_rewards_trl.accuracy", "reward.accuracy=acc", "logger.completions_every=1",
    ])
    run(cfg, run_dir=tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "reward/mean" in m]
    assert len(steps) == 2 and {"reward/digit/mean", "reward/acc/mean"} <= set(steps[0])
    sample = json.loads((tmp_path / "run" / "completions.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].startswith("<|im_start|>system\nAdd.<|im_end|>\n<|im_start|>user\n")
    assert sample["reward/digit"] == float(sample["completion"][:1].isdigit())
