"""The MATH recipe, offline: the math-verify reward on tricky answers, and every code path of
`grpo-train +recipe=math` with a tiny local checkpoint and local files in MATH's schema."""

from __future__ import annotations

import json
import random

import pytest

from examples.demo.arithmetic import write_jsonl
from grpo_cli.rewards.format import Boxed
from grpo_cli.rewards.math_answer import MathVerify, parse_gold
from grpo_cli.train import run
from tests.conftest import compose

SOLUTION = "We add the two fractions: $\\frac{1}{4}+\\frac{1}{4}=\\boxed{\\frac{1}{2}}$."

# (gold answer as the dataset stores it, completion, reward)
TRICKY = [
    (SOLUTION, "So the answer is $\\boxed{0.5}$.", 1.0),                    # decimal == fraction
    (SOLUTION, "\\boxed{\\dfrac{1}{2}}", 1.0),                              # \dfrac == \frac
    (SOLUTION, "\\boxed{2/4}", 1.0),                                         # unreduced
    (SOLUTION, "\\boxed{\\frac{1}{3}}", 0.0),                                # wrong
    (SOLUTION, "The answer is \\boxed{0.5} or maybe \\boxed{0.25}", 0.0),   # hedging: two answers
    (SOLUTION, "", 0.0),                                                     # nothing
    (SOLUTION, "I think it is one half.", 0.0),                              # no LaTeX answer
    ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}", 1.0),                             # MATH-500 `answer`: bare LaTeX
    ("2\\sqrt{3}", "\\boxed{3.4641016}", 1.0),                              # numeric, 6 digits
    ("(3, -2)", "\\boxed{(3,-2)}", 1.0),                                     # tuple, spaces
    ("(3, -2)", "\\boxed{(-2,3)}", 0.0),                                     # tuple order matters
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", 1.0),                               # set order does not
    ("[0,1)", "\\boxed{[0,1)}", 1.0),                                        # interval
    ("[0,1)", "\\boxed{(0,1)}", 0.0),                                        # open vs half-open
    ("x^2+2x+1", "\\boxed{(x+1)^2}", 1.0),                                   # symbolic equality
    ("\\frac{\\pi}{2}", "\\boxed{\\pi/2}", 1.0),
    ("90^\\circ", "\\boxed{90}", 1.0),                                       # degrees
    ("\\text{(C)}", "\\boxed{C}", 1.0),                                      # multiple choice letter
    ("1,000", "\\boxed{1000}", 1.0),                                         # thousands separator
    ("x=3", "\\boxed{3}", 1.0),                                              # equation vs value
    ("5", "The final answer is $5$.", 1.0),                                  # anchor phrase, no box
]


@pytest.mark.parametrize("gold, completion, expected", TRICKY)
def test_math_verify_tricky_answers(gold, completion, expected):
    reward = MathVerify(answer_column="solution")
    assert reward(prompts=["p"], completions=[completion], solution=[gold]) == [expected]


def test_math_verify_reads_conversational_completions_and_skips_unparsable_golds():
    reward = MathVerify(answer_column="answer")
    chat = [[{"role": "assistant", "content": "\\boxed{4}"}], [{"role": "assistant", "content": "\\boxed{4}"}]]
    assert reward(prompts=["p", "p"], completions=chat, answer=["4", ""]) == [1.0, None]
    assert parse_gold("") == []
    with pytest.raises(KeyError, match="MathVerify needs the gold answer column 'answer'"):
        reward(prompts=["p"], completions=["x"], solution=["1"])


@pytest.mark.parametrize("completion, expected", [
    ("so \\boxed{12}", 1.0), ("\\boxed{ }", 0.0), ("12", 0.0), ("\\boxed{1} then \\boxed{2}", 1.0),
])
def test_boxed_format(completion, expected):
    assert Boxed()(prompts=["p"], completions=[completion]) == [expected]


def math_rows(n: int, seed: int, eval_schema: bool) -> list[dict]:
    """Problems in MATH-lighteval's schema (problem, level, type, solution) or MATH-500's
    (problem, solution, answer, subject, level, unique_id)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(2, 9)
        solution = f"Adding, $\\frac{{{a}}}{{{b}}} + \\frac{{{a}}}{{{b}}} = \\boxed{{\\frac{{{2 * a}}}{{{b}}}}}$."
        row = {"problem": f"Compute $\\frac{{{a}}}{{{b}}} + \\frac{{{a}}}{{{b}}}$.", "level": "Level 1",
               "solution": solution}
        if eval_schema:
            row |= {"answer": f"\\frac{{{2 * a}}}{{{b}}}", "subject": "Prealgebra", "unique_id": f"test/{i}.json"}
        else:
            row["type"] = "Prealgebra"
        rows.append(row)
    return rows


@pytest.mark.engine
def test_math_recipe_runs_end_to_end_offline(tiny_model, tmp_path):
    train = write_jsonl(math_rows(40, 0, eval_schema=False), tmp_path / "train.jsonl")
    test = write_jsonl(math_rows(8, 1, eval_schema=True), tmp_path / "test.jsonl")
    cfg = compose([
        "+recipe=math", f"model.path={tiny_model}", f"data.path={train}", f"data.eval_path={test}",
        # What a CPU and a 2-layer model need; everything else is the recipe as users run it.
        "sampler.max_tokens=16", "sampler.max_model_len=256", "sampler.enforce_eager=true",
        "+sampler.engine_kwargs.kv_cache_memory_bytes=268435456", "train.autocast_dtype=null",
        "train.prompts_per_step=4", "train.micro_batch_size=8", "train.max_steps=2",
        "eval.max_rows=8", "logger.wandb_mode=disabled", "logger.completions_every=1", "checkpoint.every=0",
    ])
    assert cfg.data.eval_split == "test" and cfg.reward.funcs.correctness.fn.answer_column == "solution"
    run(cfg, run_dir=tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2] and {"reward/correctness/mean", "reward/boxed/mean"} <= set(steps[0])
    assert [m["step"] for m in lines if "eval/accuracy" in m] == [0, 2]
    sample = json.loads((tmp_path / "run" / "completions.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].startswith("<|im_start|>user\nCompute $\\frac{")
    assert sample["prompt"].endswith("put your final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
