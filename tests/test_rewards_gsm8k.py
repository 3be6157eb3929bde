"""GSM8K answer extraction, the correctness reward and the format rewards."""

from __future__ import annotations

import pytest

from grpo_cli.rewards.format import AnswerFormat, ThinkFormat
from grpo_cli.rewards.gsm8k import (
    Correctness,
    extract_flexible,
    extract_gold,
    extract_strict,
    normalize_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", "42"),
        (" 42 ", "42"),
        ("42.0", "42"),
        ("42.", "42"),
        ("1,234", "1234"),
        ("1,234,567.50", "1234567.5"),
        ("$42", "42"),
        ("-3", "-3"),
        ("-$3", "-3"),
        ("$-3", "-3"),
        ("-0.0", "0"),
        ("0.5", "0.5"),
        (".5", "0.5"),
        ("007", "7"),
        ("100", "100"),
        ("", None),
        ("abc", None),
        ("42 dollars", None),
        ("1e5", None),
        ("--3", None),
        ("-$-3", None),
    ],
)
def test_normalize_number(text: str, expected: str | None) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
        ("She pays 1,000 + 234.\n#### 1,234", "1234"),
        ("first #### 5 then\n#### 6", "6"),
        ("#### -8", "-8"),
        ("72", "72"),  # a dataset that stores the bare result
        ("no answer here", None),
    ],
)
def test_extract_gold(answer: str, expected: str | None) -> None:
    assert extract_gold(answer) == expected


# (completion, strict, flexible)
EXTRACTION_CASES = [
    ("So the answer is 72.\n#### 72", "72", "72"),
    ("#### 1,234", "1234", "1234"),
    ("#### $42.", "42", "42"),
    ("####-7", "-7", "-7"),
    ("#### -7", "-7", "-7"),
    ("#### 18 dollars", "18", "18"),
    ("#### 3.50", "3.5", "3.5"),
    ("#### .5", "0.5", "0.5"),
    ("#### 5\nWait, let me recheck.\n#### 6", "6", "6"),
    ("#### 6\nActually it is 7.", "6", "7"),
    ("The answer is 42.", None, "42"),
    ("Total is 1,234,567 apples.", None, "1234567"),
    ("She ends with -$5 in her account.", None, "-5"),
    ("5-3 = 2, and 10-3", None, "3"),
    ("He counted 1,2,3", None, "3"),
    ("#### the answer is 18", None, "18"),
    ("#### ", None, None),
    ("####", None, None),
    ("no digits at all", None, None),
    ("", None, None),
]


@pytest.mark.parametrize(("completion", "strict", "flexible"), EXTRACTION_CASES)
def test_extract_strict(completion: str, strict: str | None, flexible: str | None) -> None:
    assert extract_strict(completion) == strict


@pytest.mark.parametrize(("completion", "strict", "flexible"), EXTRACTION_CASES)
def test_extract_flexible(completion: str, strict: str | None, flexible: str | None) -> None:
    assert extract_flexible(completion) == flexible


@pytest.mark.parametrize(
    ("completion", "gold", "strict", "flexible"),
    [
        ("#### 72", "#### 72", 1.0, 1.0),
        ("#### 72.00", "#### 72", 1.0, 1.0),
        ("#### 1234", "#### 1,234", 1.0, 1.0),
        ("#### $1,234.", "#### 1234", 1.0, 1.0),
        ("#### 71", "#### 7", 0.0, 0.0),
        ("#### 7", "#### 71", 0.0, 0.0),
        ("#### -7", "#### 7", 0.0, 0.0),
        ("#### 0.5", "#### .5", 1.0, 1.0),
        ("#### 5\n#### 6", "#### 6", 1.0, 1.0),
        ("#### 6\n#### 5", "#### 6", 0.0, 0.0),
        ("The answer is 72.", "#### 72", 0.0, 1.0),
        ("#### 72\nor maybe 73", "#### 72", 1.0, 0.0),
        ("", "#### 72", 0.0, 0.0),
        ("#### 72", "no number", None, None),
    ],
)
def test_correctness(
    completion: str, gold: str, strict: float | None, flexible: float | None
) -> None:
    for mode, expected in (("strict", strict), ("flexible", flexible)):
        assert Correctness(mode)(["q"], [completion], answer=[gold]) == [expected], mode


def test_correctness_batch_custom_column_and_extra_columns() -> None:
    reward = Correctness(mode="strict", answer_column="solution")
    out = reward(
        ["q1", "q2", "q3"],
        ["#### 3", "#### 4", "nothing"],
        solution=["#### 3", "#### 5", "#### 1"],
        question=["a", "b", "c"],
        answer=["#### 4", "#### 4", "#### 4"],
    )
    assert out == [1.0, 0.0, 0.0]


def test_correctness_int_gold_column() -> None:
    assert Correctness()(["q", "q"], ["#### 12", "#### 13"], answer=[12, 12]) == [1.0, 0.0]


def test_correctness_missing_column_names_it() -> None:
    with pytest.raises(KeyError, match=r"'answer'.*only have: question, solution"):
        Correctness()(["q"], ["#### 1"], solution=["#### 1"], question=["q"])


def test_correctness_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 values for 1 completions"):
        Correctness()(["q"], ["#### 1"], answer=["#### 1", "#### 2"])


def test_correctness_bad_mode() -> None:
    with pytest.raises(ValueError, match=r"strict, flexible.*'lenient'"):
        Correctness(mode="lenient")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Reasoning.\n#### 42", 1.0),
        ("Reasoning.\n#### 42  \n\n", 1.0),
        ("#### $1,234.", 1.0),
        ("Reasoning.\n  ####-7", 1.0),
        ("#### 42 dollars", 0.0),
        ("#### 42\nDone.", 0.0),
        ("The answer is 42.", 0.0),
        ("Reasoning. #### 42", 0.0),
        ("####", 0.0),
        ("", 0.0),
    ],
)
def test_answer_format(completion: str, expected: float) -> None:
    assert AnswerFormat()(["q"], [completion], answer=["#### 42"]) == [expected]


def test_answer_format_value() -> None:
    assert AnswerFormat(value=0.25)(["q", "q"], ["#### 1", "1"]) == [0.25, 0.0]


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        ("q", "<think>add them</think>\n#### 5", 1.0),
        ("q", "<think>add them</think> The answer is 5.", 1.0),
        ("q", "Intro. <think>x</think>\nSo:\n#### 5", 1.0),
        ("q", "<think>#### 4 no wait</think>\n#### 5", 1.0),
        ("q", "<think>add them</think>", 0.0),
        ("q", "<think>add them</think>   \n", 0.0),
        ("q", "<think>   </think>\n#### 5", 0.0),
        ("q", "<think>#### 5</think>", 0.0),
        ("q", "#### 5\n<think>add them</think> ok", 0.0),
        ("q", "<think>add them\n#### 5", 0.0),
        ("q", "add them</think>\n#### 5", 0.0),
        ("q", "#### 5", 0.0),
        ("q", "", 0.0),
        ("Assistant: <think>\n", "add them</think>\n#### 5", 1.0),
        ("Assistant: <think>\n", "</think>\n#### 5", 0.0),
    ],
)
def test_think_format(prompt: str, completion: str, expected: float) -> None:
    assert ThinkFormat()([prompt], [completion], answer=["#### 5"]) == [expected]


def test_think_format_value() -> None:
    out = ThinkFormat(value=0.5)(["q", "q"], ["<think>a</think> 1", "1"])
    assert out == [0.5, 0.0]
