"""MATH-style correctness with Hugging Face's math-verify: LaTeX answers, `\\boxed{}`, equivalent forms.

(Not named `math.py`: a submodule `math` would shadow the standard library's `math` inside
grpo_cli.rewards.)

A completion is correct when the answer it gives is mathematically equal to the gold answer:
`\\boxed{0.5}` == `\\frac{1}{2}`, `\\boxed{\\sqrt{12}}` == `2\\sqrt{3}`, `\\boxed{(x+1)^2}` ==
`x^2+2x+1`, `\\boxed{\\{2,1\\}}` == `\\{1,2\\}`. The completion's answer is read from `\\boxed{}`
(or an explicit "final answer is $...$"), with the extraction settings of open-r1's and TRL's
math accuracy reward; several different boxed answers count as one set, so hedging scores 0.
"""

from __future__ import annotations

from latex2sympy2_extended import NormalizationConfig
from math_verify import LatexExtractionConfig, parse, verify

from grpo_cli.rewards import completion_text

# How the model's answer is read (open-r1 / TRL accuracy_reward): boxed first, no bare-number
# guessing, units and \text{} stripped, no "fixing" of malformed LaTeX.
_ANSWER = [LatexExtractionConfig(
    normalization_config=NormalizationConfig(nits=False, malformed_operators=False, basic_latex=True,
                                             boxed="all", units=True),
    boxed_match_priority=0,
    try_extract_without_anchor=False,
)]


def parse_gold(gold: str) -> list:
    """The gold answer, from a worked solution with `\\boxed{}` (MATH's `solution`) or a bare LaTeX
    answer (MATH-500's `answer`); [] when nothing parses."""
    gold = str(gold)
    if "\\boxed" not in gold and "$" not in gold:
        gold = f"${gold}$"
    return parse(gold, extraction_mode="first_match")


class MathVerify:
    """Reward 1.0 when the completion's final answer equals the gold answer (math-verify), else 0.0.

    answer_column: the dataset column with the gold answer (`solution` in MATH and MATH-500,
    which holds the worked solution ending in `\\boxed{...}`). A row whose gold answer does not
    parse gets None (not applicable).
    """

    def __init__(self, answer_column: str = "solution") -> None:
        self.answer_column = answer_column
        self.__name__ = "math_verify"

    def __call__(self, completions: list, **columns: list) -> list[float | None]:
        if self.answer_column not in columns:
            raise KeyError(
                f"MathVerify needs the gold answer column {self.answer_column!r}, but the rows only have: "
                f"{', '.join(sorted(columns)) or '(no columns)'}. Set answer_column to the column that holds the answer."
            )
        golds: dict[str, list] = {}  # G completions share one gold answer: parse it once
        rewards: list[float | None] = []
        for completion, answer in zip(completions, columns[self.answer_column]):
            gold = golds.setdefault(str(answer), parse_gold(answer))
            if not gold:
                rewards.append(None)
                continue
            predicted = parse(completion_text(completion), extraction_config=_ANSWER, extraction_mode="first_match")
            rewards.append(float(verify(gold, predicted)) if predicted else 0.0)
        return rewards
