"""A learned reward model as a reward: `AutoModelForSequenceClassification` scores prompt + completion.

    reward.funcs.rm:
      fn: {_target_: grpo_cli.rewards.model.RewardModel, path: OpenAssistant/reward-model-deberta-v3-large-v2}
      weight: 0.5

`path` is a hub id or a local `save_pretrained` directory; the model must have one output
(`num_labels=1`), whose logit is the reward. Texts are scored `batch_size` at a time, on `device`
(give it the learner's: `device: ${train.device}`), in eval mode without gradients.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from grpo_cli.devices import DTYPES, resolve_device
from grpo_cli.rewards import completion_text


class RewardModel:
    def __init__(self, path: str, device: str = "auto", dtype: str = "float32", batch_size: int = 8,
                 max_length: int | None = None, tokenizer: str | None = None):
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = resolve_device(device)  # `auto`: CUDA when available, like train.device
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=DTYPES[dtype]).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model {path!r} has num_labels={self.model.config.num_labels}; a reward model has 1")
        if self.model.config.pad_token_id is None:  # decoder RMs find the last real token by the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length = batch_size, max_length

    def _text(self, prompt, completion) -> str:
        """Plain text: prompt + completion. Chat messages (conversational data): the whole
        conversation through the reward model's chat template, as reward models are trained."""
        if isinstance(prompt, str):
            return prompt + completion_text(completion)
        messages = list(prompt) + [{"role": "assistant", "content": completion_text(completion)}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        texts = [self._text(p, c) for p, c in zip(prompts, completions)]
        scores: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=self.max_length is not None,
                                 max_length=self.max_length, add_special_tokens=False, return_tensors="pt")
            logits = self.model(**enc.to(self.device)).logits  # [b, 1]
            scores += logits[:, 0].float().cpu().tolist()
        return scores
