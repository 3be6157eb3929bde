"""Format rewards: did the completion write its answer the way the prompt asked?

Both ignore the dataset columns; they look at the completion text only (ThinkFormat also at
the prompt, to see whether the chat template already opened the `<think>` block).
"""

from __future__ import annotations

from grpo_cli.rewards import completion_text
from grpo_cli.rewards.gsm8k import normalize_number


class AnswerFormat:
    """Reward `value` when the completion's last non-blank line is `#### <number>`, else 0.0.

    Spaces around the line are allowed; the number may use commas, `$`, a minus sign, decimals
    and a trailing period ("#### $1,234.").
    """

    def __init__(self, value: float = 1.0) -> None:
        self.value = value
        self.__name__ = "answer_format"

    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list[float]:
        return [self.value if _ends_with_answer(completion_text(c)) else 0.0 for c in completions]


def _ends_with_answer(completion: str) -> bool:
    last_line = completion.rstrip().rpartition("\n")[2].strip()
    return last_line.startswith("####") and normalize_number(last_line[4:]) is not None


class ThinkFormat:
    """Reward `value` when a non-empty `<think>...</think>` block comes before the answer, else 0.0.

    DeepSeek-R1 style. "Before the answer" means: the block closes before the completion's last
    `####` when it has one, and in any case some non-blank text follows `</think>`. If the prompt
    already ends with `<think>` (a chat template that opens the block), the completion only
    needs the closing `</think>`.
    """

    def __init__(self, value: float = 1.0) -> None:
        self.value = value
        self.__name__ = "think_format"

    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list[float]:
        return [
            self.value if _has_think_before_answer(completion_text(p), completion_text(c)) else 0.0
            for p, c in zip(prompts, completions)
        ]


def _has_think_before_answer(prompt: str, completion: str) -> bool:
    if prompt.rstrip().endswith("<think>") and "<think>" not in completion.partition("</think>")[0]:
        start = 0
    else:
        opened = completion.find("<think>")
        if opened < 0:
            return False
        start = opened + len("<think>")
    closed = completion.find("</think>", start)
    if closed < 0 or not completion[start:closed].strip():
        return False
    after = completion[closed + len("</think>") :]
    return bool(after.strip()) and ("####" not in completion or "####" in after)


class Boxed:
    """Reward `value` when the completion puts a non-empty answer in `\\boxed{...}`, else 0.0."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = value
        self.__name__ = "boxed_format"

    def __call__(self, prompts: list, completions: list, **columns: list) -> list[float]:
        return [self.value if _has_boxed(completion_text(c)) else 0.0 for c in completions]


def _has_boxed(completion: str) -> bool:
    start = completion.rfind("\\boxed{")
    return start >= 0 and bool(completion[start + len("\\boxed{"):].partition("}")[0].strip())
