"""Tool-call parsers: the assistant's text -> its plain content and the tool calls it makes.

Each model family writes tool calls its own way; `tools.parser._target_` picks the class. A new
format is a small class with `parse(text) -> ParsedTurn` plus a YAML line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


@dataclass
class ToolCall:
    """One call: a tool name and its arguments, or the reason it could not be read."""

    name: str
    arguments: dict = field(default_factory=dict)
    error: str | None = None  # the call was malformed (bad JSON, arguments not an object, no name)

    def as_message_call(self) -> dict:
        """The call as a chat message's `tool_calls` entry (transformers' and TRL's form)."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ParsedTurn:
    """An assistant turn, read."""

    content: str  # the text outside the tool calls
    calls: list[ToolCall]

    def message(self) -> dict:
        """The assistant message of this turn (with `tool_calls` when it makes any)."""
        msg = {"role": "assistant", "content": self.content}
        if self.calls:
            msg["tool_calls"] = [c.as_message_call() for c in self.calls]
        return msg


class QwenToolCalls:
    """Qwen2.5's (and Hermes') format: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
    one block per call, anywhere in the turn. A block that is not such a JSON object is a call with
    an error (the model is told, the run goes on)."""

    BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

    def parse(self, text: str) -> ParsedTurn:
        calls = [self._call(body) for body in self.BLOCK.findall(text)]
        return ParsedTurn(self.BLOCK.sub("", text).strip(), calls)

    @staticmethod
    def _call(body: str) -> ToolCall:
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as err:
            return ToolCall("unknown", error=f"the tool call is not valid JSON ({err.msg} at column {err.colno})")
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return ToolCall("unknown", error='a tool call must be a JSON object {"name": ..., "arguments": {...}}')
        args = obj.get("arguments", {})
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if not isinstance(args, dict):
            return ToolCall(obj["name"], error=f"the arguments of {obj['name']} must be a JSON object")
        return ToolCall(obj["name"], args)
