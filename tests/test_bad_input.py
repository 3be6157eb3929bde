"""Bad data, model and config input: one line naming the key or file, before any engine starts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from transformers import ViTConfig

from grpo_cli.config.validate import validate
from grpo_cli.errors import UserError
from grpo_cli.learner.models import load_tokenizer
from grpo_cli.rollout.prompts import PromptFormatter
from grpo_cli.train import run
from tests.conftest import compose


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


GOOD = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(40)]


def _data(tmp: Path, content: bytes | None, name: str = "train.jsonl") -> list[str]:
    path = tmp / name
    if content is None:
        path.mkdir()  # a directory where a file should be: unreadable as data
    else:
        path.write_bytes(content)
    return [f"data.path={path}"]


def _model_dir(tmp: Path, kind: str) -> list[str]:
    d = tmp / "model"
    d.mkdir()
    if kind == "not_checkpoint":
        (d / "notes.txt").write_text("not a model")
    elif kind == "not_causal":
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(d)
    return [f"model.path={d}"]


# (case, how to set it up given tmp_path, expected message: the key or file, and what is wrong)
CASES = {
    "missing data file": (lambda t: ["data.path=/nonexistent/train.jsonl"],
                          r"data.path='/nonexistent/train.jsonl' is invalid: no such file"),
    "empty data file": (lambda t: _data(t, b""), r"data.path='.*train.jsonl': the file is empty"),
    "malformed JSON line": (lambda t: _data(t, _jsonl(GOOD[:2]) + b'{"prompt": "1+1=", "answer": \n'),
                            r"data.path='.*train.jsonl': line 3 is not valid JSON"),
    "bad encoding": (lambda t: _data(t, _jsonl(GOOD[:1]) + b'{"prompt": "\xff\xfe", "answer": "1"}\n'),
                     r"data.path='.*train.jsonl': line 2 is not UTF-8 text"),
    "unreadable data file": (lambda t: _data(t, None), r"data.path='.*train.jsonl': cannot read it \(IsADirectoryError"),
    "missing prompt column": (lambda t: _data(t, _jsonl(GOOD)) + ["data.prompt_column=question"],
                              r"data.prompt_column='question' is not a column of the training data; columns: prompt, answer"),
    "template names a missing column": (
        lambda t: _data(t, _jsonl(GOOD)) + ["data.prompt_template='{prompt} (hint: {hint})'"],
        r"data.prompt_template='\{prompt\} \(hint: \{hint\}\)' names \{hint\}, which is not a column of the training data"),
    "every prompt too long": (
        lambda t: _data(t, _jsonl([{"prompt": "9" * 80, "answer": "1"}] * 40)),
        r"every training prompt is at least sampler.max_model_len=64 tokens long"),
    "model path is not a checkpoint": (lambda t: _model_dir(t, "not_checkpoint"),
                                       r"model.path='.*model' is not a model checkpoint \(no config.json\)"),
    "model is not a causal LM": (lambda t: _model_dir(t, "not_causal"),
                                 r"model.path='.*model' is a 'vit' model, not a causal LM"),
    "max_tokens beyond the model's context": (
        lambda t: ["sampler.max_tokens=600", "sampler.max_model_len=1024"],
        r"sampler.max_tokens=600 is invalid: the model's context is 512 tokens"),
    "max_model_len beyond the model's context": (
        lambda t: ["sampler.max_model_len=1024"],
        r"sampler.max_model_len=1024 is invalid: the model's context is 512 tokens"),
    "optimizer cannot be imported": (lambda t: ["optim.optimizer._target_=torch.optim.NoSuchAdam"],
                                     r"optim.optimizer._target_='torch.optim.NoSuchAdam' is invalid: cannot be imported"),
    "aggregation cannot be imported": (lambda t: ["algo.aggregation._target_=my_pkg.Nope"],
                                       r"algo.aggregation._target_='my_pkg.Nope' is invalid: cannot be imported"),
    "resume dir does not exist": (lambda t: ["resume=/nonexistent/run"],
                                  r"resume='/nonexistent/run' is invalid: no such run directory"),
    "resume dir holds no checkpoint": (lambda t: [f"resume={t}"],
                                       r"resume='.*' is invalid: it holds no complete checkpoint"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_key_or_file(case, tiny_overrides, tmp_path):
    setup, expected = CASES[case]
    cfg = compose(tiny_overrides + setup(tmp_path))
    run_dir = tmp_path / "run"
    with pytest.raises(UserError) as err:
        validate(cfg)  # what the CLI checks before Hydra makes the run dir
        run(cfg, run_dir=run_dir)  # what the run checks before it starts an engine
    message = str(err.value)
    assert "\n" not in message
    assert re.search(expected, message), message
    assert not (run_dir / "checkpoints").exists()


def test_long_prompts_are_skipped_with_a_counted_warning(tiny_model, capsys):
    cfg = compose(["model=tiny-local", f"model.path={tiny_model}", "data=arithmetic", "data.path=x"])
    fmt = PromptFormatter(cfg.data, load_tokenizer(cfg.model))
    table = datasets.Dataset.from_list(GOOD[:5] + [{"prompt": "9" * 80, "answer": "1"}] * 3)
    kept = fmt.fit(table, "training", max_model_len=64)
    assert kept["prompt"] == [r["prompt"] for r in GOOD[:5]]
    assert "skipped 3 of 8 training prompts longer than sampler.max_model_len=64 tokens" in capsys.readouterr().err


def test_a_template_may_name_other_columns(tiny_model):
    cfg = compose(["model=tiny-local", f"model.path={tiny_model}", "data=arithmetic", "data.path=x",
                   "data.use_chat_template=false", "data.prompt_template='{prompt} ({answer})'"])
    fmt = PromptFormatter(cfg.data, load_tokenizer(cfg.model))
    fmt.check_columns(datasets.Dataset.from_list(GOOD[:2]), "training")
    assert fmt(GOOD[0]) == "0+1= (1)"


def test_bad_data_from_the_cli_is_one_line_exit_1(tiny_overrides, tmp_path):
    args = tiny_overrides + _data(tmp_path, _jsonl(GOOD[:2]) + b"{oops\n") + [f"hydra.run.dir={tmp_path / 'run'}"]
    out = subprocess.run([sys.executable, "-m", "grpo_cli", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("grpo-train: error: data.path=")
    assert "line 3 is not valid JSON" in out.stderr and "Traceback" not in out.stderr


def test_eval_of_a_lora_checkpoint_points_at_its_merged_model(tmp_path):
    """A LoRA run's checkpoint holds the adapter only: grpo-eval on it says which folder to use."""
    from grpo_cli.learner.models import ModelLoadError, check_model

    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}')
    cfg = compose(["model=tiny-local", f"model.path={adapter}"])
    with pytest.raises(ModelLoadError, match=r"is a LoRA adapter, not a whole model: save checkpoints with "
                                             r"checkpoint.merged=true and use DIR/merged"):
        check_model(cfg.model, 64, 8)
    (adapter / "merged").mkdir()
    (adapter / "merged" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=rf"use its merged model, model.path={adapter / 'merged'}$"):
        check_model(cfg.model, 64, 8)
