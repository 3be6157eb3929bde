"""DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), a reward on completion length in tokens.

    r(y) = 0                                  if |y| <= L_max - L_cache
           ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
           -1                                 if |y| > L_max

It falls linearly from 0 to -1 across the last `cache_tokens` tokens before `max_tokens`, so a
completion is told it is getting long before it is cut off.
"""

from __future__ import annotations


class OverlongPenalty:
    def __init__(self, max_tokens: int, cache_tokens: int):
        if not 0 < cache_tokens <= max_tokens:
            raise ValueError(f"overlong penalty: cache_tokens={cache_tokens} must be in (0, max_tokens={max_tokens}]")
        self.max_tokens, self.cache_tokens = max_tokens, cache_tokens

    def penalty(self, length: int) -> float:
        expected = self.max_tokens - self.cache_tokens
        if length <= expected:
            return 0.0
        if length <= self.max_tokens:
            return (expected - length) / self.cache_tokens
        return -1.0

    def __call__(self, prompts, completions, completion_ids=None, **_) -> list[float]:
        if completion_ids is None:
            raise TypeError("needs completion_ids= (token ids of each completion) from the reward call")
        return [self.penalty(len(ids)) for ids in completion_ids]
