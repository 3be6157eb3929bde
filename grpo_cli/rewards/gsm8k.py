"""GSM8K answer extraction and the correctness reward.

A GSM8K `answer` holds the worked solution followed by `#### N`. A completion is correct when
the number it gives equals N numerically ("1,234" == "1234.0", "$42." == "42", ".5" == "0.5").

Numbers are compared through a canonical string (`normalize_number`): every value has exactly
one, so equal strings mean equal numbers and "71" can never match "7".
"""

from __future__ import annotations

import re
from decimal import Decimal

from grpo_cli.rewards import completion_text

# A number as written inside text: optional minus (not a subtraction like "5-3"), optional "$",
# digits with optional thousands separators, optional decimals. It never starts inside another
# number and a sentence-ending period ("is 42.") is not part of it.
_NUMBER = re.compile(
    r"""
    (?<![\d.])
    (?:(?<![\w)])-)?
    \$?
    (?: (?:\d{1,3}(?:,\d{3})+(?!\d) | \d+) (?:\.\d+)? | \.\d+ )
    """,
    re.VERBOSE,
)
# A whole string that is one number once commas and a trailing period are gone: "-$5", "$-5", ".5".
_PLAIN = re.compile(r"(-?)\$?(-?)(\d+(?:\.\d+)?|\.\d+)")

_MODES = ("strict", "flexible")


def normalize_number(text: str) -> str | None:
    """Canonical string of the number `text` holds, or None if it is not a number.

    Surrounding spaces, commas, a `$` and a trailing period are ignored. The result has no
    trailing zeros, no exponent and no "-0": "1,234.50" -> "1234.5", "42.0" -> "42", ".5" -> "0.5".
    """
    s = text.strip().replace(",", "").removesuffix(".")
    m = _PLAIN.fullmatch(s)
    if m is None or (m[1] and m[2]):
        return None
    value = Decimal(m[3])
    if value == 0:
        return "0"
    out = format(value, "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return f"-{out}" if (m[1] or m[2]) else out


def extract_gold(answer: str) -> str | None:
    """The normalised number after the LAST `####` of a GSM8K `answer`.

    An answer without `####` is read as a bare number (datasets that store only the result).
    """
    answer = str(answer)
    return normalize_number(answer.rpartition("####")[2])


def extract_strict(completion: str) -> str | None:
    """The normalised number right after the completion's LAST `####`, or None.

    Only whitespace may sit between `####` and the number; words after it are allowed
    ("#### 18 dollars" -> "18", "####-7" -> "-7", "#### $1,234." -> "1234").
    """
    _, sep, tail = completion.rpartition("####")
    if not sep:
        return None
    m = _NUMBER.match(tail.lstrip())
    return normalize_number(m[0]) if m else None


def extract_flexible(completion: str) -> str | None:
    """The normalised last number anywhere in the completion, or None if it has none."""
    matches = _NUMBER.findall(completion)
    return normalize_number(matches[-1]) if matches else None


class Correctness:
    """Reward 1.0 when the completion's answer equals the gold answer, else 0.0.

    mode: "strict" reads the number after the completion's last `####`; "flexible" reads the
    last number anywhere in it. answer_column: the dataset column with the gold answer.
    A row whose gold answer holds no number gets None (not applicable).
    """

    def __init__(self, mode: str = "strict", answer_column: str = "answer") -> None:
        if mode not in _MODES:
            raise ValueError(f"Correctness mode must be one of {', '.join(_MODES)}; got {mode!r}")
        self.mode = mode
        self.answer_column = answer_column
        self.__name__ = f"correctness_{mode}"
        self._extract = extract_strict if mode == "strict" else extract_flexible

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: list
    ) -> list[float | None]:
        if self.answer_column not in columns:
            raise KeyError(
                f"Correctness needs the gold answer column {self.answer_column!r}, but the rows "
                f"only have: {', '.join(sorted(columns)) or '(no columns)'}. "
                "Set answer_column to the column that holds the answer."
            )
        golds = columns[self.answer_column]
        if len(golds) != len(completions):
            raise ValueError(
                f"column {self.answer_column!r} has {len(golds)} values for {len(completions)} completions"
            )
        rewards: list[float | None] = []
        for completion, answer in zip(completions, golds):
            completion = completion_text(completion)
            gold = extract_gold(answer)
            if gold is None:
                rewards.append(None)
            else:
                rewards.append(1.0 if self._extract(completion) == gold else 0.0)
        return rewards
