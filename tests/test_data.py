"""Prompt data: local files in every supported format, the held-out split, a resumable order."""

from __future__ import annotations

import datasets
import pytest
from omegaconf import OmegaConf

from examples.demo.arithmetic import make_rows, write_jsonl
from grpo_cli.rollout.prompts import (
    DataError,
    PromptFormatter,
    PromptStream,
    load_splits,
    load_table,
)

ROWS = make_rows(30, seed=0)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_local_files_of_every_format_load(suffix, tmp_path):
    path = tmp_path / f"d{suffix}"
    table = datasets.Dataset.from_list(ROWS)
    {".jsonl": table.to_json, ".json": table.to_json, ".parquet": table.to_parquet, ".csv": table.to_csv}[suffix](str(path))
    loaded = load_table(str(path))
    assert len(loaded) == 30 and [str(a) for a in loaded["answer"]] == [r["answer"] for r in ROWS]


def _data_cfg(path, **kw):
    base = {"path": str(path), "name": None, "train_split": "train", "eval_split": None, "eval_path": None,
            "eval_holdout": 0, "prompt_column": "prompt", "prompt_template": "{prompt}", "system_prompt": None,
            "use_chat_template": True, "shuffle": True}
    return OmegaConf.create(base | kw)


def test_holdout_split_is_disjoint_and_fixed(tmp_path):
    path = write_jsonl(ROWS, tmp_path / "t.jsonl")
    train, held = load_splits(_data_cfg(path, eval_holdout=5))
    train2, held2 = load_splits(_data_cfg(path, eval_holdout=5))
    assert len(train) == 25 and len(held) == 5 and held["prompt"] == held2["prompt"]
    assert not set(map(tuple, zip(train["prompt"], train["answer"]))) & set(map(tuple, zip(held["prompt"], held["answer"])))


def test_prompt_stream_is_seeded_covers_each_epoch_and_resumes(tmp_path):
    table = datasets.Dataset.from_list(ROWS)
    a = PromptStream(table, 10, seed=3, shuffle=True)
    epoch0 = [p for _ in range(3) for p in a.next()["prompt"]]
    assert sorted(epoch0) == sorted(r["prompt"] for r in ROWS)  # every row once per epoch
    state = a.state_dict()
    nxt = a.next()["prompt"]
    b = PromptStream(table, 10, seed=3, shuffle=True)
    b.load_state_dict(state)
    assert b.next()["prompt"] == nxt and a.epoch == 1
    c = PromptStream(table, 10, seed=4, shuffle=True)
    assert [p for _ in range(3) for p in c.next()["prompt"]] != epoch0


def test_too_few_rows_for_a_step_is_a_clear_error():
    with pytest.raises(DataError, match="train.prompts_per_step=64 exceeds the 30 training rows"):
        PromptStream(datasets.Dataset.from_list(ROWS), 64, seed=0, shuffle=True)


def test_chat_template_and_system_prompt(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    fmt = PromptFormatter(_data_cfg("x", prompt_template="Q: {prompt}", system_prompt="Be brief."), tok)
    text = fmt({"prompt": "1+1="})
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ: 1+1=<|im_end|>\n<|im_start|>assistant\n"
    plain = PromptFormatter(_data_cfg("x", use_chat_template=False), tok)
    assert plain({"prompt": "1+1="}) == "1+1="
    assert tok.decode(fmt.encode([text])[0]) == text  # specials are single tokens, nothing added
