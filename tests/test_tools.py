"""Tools, the fast layer: TRL-form tools and environments, the Qwen2.5 call parser, the runner's
faults (each one a message for the model, never a crash), the tool-result suffix against TRL's
own method, and the learner's mask: no loss, KL or entropy on a tool's tokens."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from grpo_cli.errors import ConfigError, UserError
from grpo_cli.tools.parsers import QwenToolCalls, ToolCall
from grpo_cli.tools.registry import Toolbox, as_tool, environment_reward
from grpo_cli.tools.runner import ToolRunner


# --- TRL's documented examples (docs: "Tools" and "Environments" of GRPOTrainer) ---------------
def multiply(a: int, b: int) -> int:
    """
    Multiplies two integers.

    Args:
        a: The first integer.
        b: The second integer.

    Returns:
        The product of the two integers.
    """
    return a * b


async def async_add(a: int, b: int) -> int:
    """
    Adds two integers, asynchronously.

    Args:
        a: The first integer.
        b: The second integer.
    """
    await asyncio.sleep(0)
    return a + b


class CounterEnv:
    """An environment in TRL's form: reset(**row), public methods are tools, get_reward() owns a reward."""

    def reset(self, **kwargs) -> str | None:
        self.count, self.target = 0, int(kwargs.get("target", 3))
        return f" Count to {self.target}."

    def increment(self, step: int) -> str:
        """
        Adds `step` to the counter.

        Args:
            step: How much to add.
        """
        self.count += step
        return str(self.count)

    def get_reward(self) -> float:
        return float(self.count == self.target)


def no_docstring(x: int) -> int:
    return x


class Unprintable:
    def __str__(self):
        raise RuntimeError("cannot print me")


def sleepy(seconds: float) -> str:
    """
    Sleeps.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "woke"


def broken(x: int) -> str:
    """
    Always raises.

    Args:
        x: Anything.
    """
    raise ValueError(f"bad value {x}\nsecond line")


def unprintable() -> object:
    """Returns what cannot be printed."""
    return Unprintable()


def _cfg(**tools):
    return OmegaConf.create({"funcs": [], "environment": None, **tools})


def test_a_trl_tool_is_described_as_transformers_describes_it():
    from transformers.utils import get_json_schema

    tool = as_tool(multiply, "tools.funcs[0]")
    assert tool.name == "multiply" and tool.schema == get_json_schema(multiply)
    assert tool.schema["function"]["parameters"]["properties"]["a"] == {"type": "integer", "description": "The first integer."}


def test_a_tool_without_a_docstring_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"tools.funcs\[0\]: cannot describe tool 'no_docstring'"):
        as_tool(no_docstring, "tools.funcs[0]")


def test_toolbox_from_config_loads_functions_and_an_environment_per_rollout():
    box = Toolbox.from_config(_cfg(funcs=["tests.test_tools.multiply"], environment="tests.test_tools.CounterEnv"))
    assert [s["function"]["name"] for s in box.schemas] == ["multiply", "increment"]
    assert box.reward_name == "CounterEnv"
    (tools_a, env_a), (_, env_b) = box.for_rollout(), box.for_rollout()
    assert env_a is not env_b and set(tools_a) == {"multiply", "increment"}
    env_a.reset(target=2), env_b.reset(target=2)
    tools_a["increment"](step=2)
    assert (env_a.count, env_b.count) == (2, 0)  # state is per rollout, never shared
    assert environment_reward([env_a, env_b]) == [1.0, 0.0]
    assert Toolbox.from_config(_cfg()) is None  # no tools: single-turn rollouts


def test_an_unknown_tool_path_is_a_config_error():
    with pytest.raises(ConfigError, match=r"tools.funcs\[0\]: cannot load 'tests.test_tools.nope'"):
        Toolbox.from_config(_cfg(funcs=["tests.test_tools.nope"]))


@pytest.mark.parametrize("text, calls, content", [
    ('<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "b": 4}}\n</tool_call>', [("multiply", {"a": 3, "b": 4})], ""),
    ('Let me. <tool_call>{"name":"multiply","arguments":{"a":1,"b":2}}</tool_call><tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>',
     [("multiply", {"a": 1, "b": 2}), ("f", {"x": 1})], "Let me."),
    ("42", [], "42"),
])
def test_qwen_tool_calls_are_parsed(text, calls, content):
    turn = QwenToolCalls().parse(text)
    assert [(c.name, c.arguments) for c in turn.calls] == calls and turn.content == content
    assert all(c.error is None for c in turn.calls)
    if calls:
        assert turn.message()["tool_calls"][0] == {"type": "function", "function": {"name": calls[0][0], "arguments": calls[0][1]}}


@pytest.mark.parametrize("body, error", [
    ('{"name": "multiply", "arguments": {"a": 3', "not valid JSON"),
    ('["multiply"]', "must be a JSON object"),
    ('{"name": "multiply", "arguments": [1, 2]}', "arguments of multiply must be a JSON object"),
])
def test_a_malformed_call_is_a_call_with_an_error(body, error):
    (call,) = QwenToolCalls().parse(f"<tool_call>{body}</tool_call>").calls
    assert error in call.error


def test_every_fault_is_a_tool_message_and_counted():
    runner = ToolRunner(timeout_s=0.5, max_workers=8)
    tools = {f.__name__: f for f in (multiply, async_add, sleepy, broken, unprintable)}
    calls = [ToolCall("multiply", {"a": 6, "b": 7}), ToolCall("async_add", {"a": 1, "b": 2}),
             ToolCall("broken", {"x": 1}), ToolCall("sleepy", {"seconds": 5}), ToolCall("unprintable", {}),
             ToolCall("multiply", {"a": 1}), ToolCall("multiply", {"a": 1, "c": 2}), ToolCall("search", {"q": "x"}),
             ToolCall("unknown", error="the tool call is not valid JSON")]
    t0 = time.perf_counter()
    (results,), seconds = runner.run([(tools, calls)])
    assert time.perf_counter() - t0 < 2.0 and seconds < 2.0  # the hung call did not hold the turn
    got = [(r.name, r.failed, r.content) for r in results]
    assert got[0] == ("multiply", False, "42") and got[1] == ("async_add", False, "3")
    assert got[2] == ("broken", True, "{'error': 'ValueError: bad value 1'}")
    assert got[3] == ("sleepy", True, "{'error': 'sleepy timed out after 0.5 s'}")
    assert got[4][1] and "cannot print me" in got[4][2]
    assert got[5][1] and "missing 1 required positional argument: 'b'" in got[5][2]
    assert got[6][1] and "unexpected keyword argument 'c'" in got[6][2]
    assert got[7] == ("search", True, "{'error': \"unknown tool 'search'; the tools are: async_add, broken, multiply, "
                                      "sleepy, unprintable\"}")
    assert got[8] == ("unknown", True, "{'error': 'the tool call is not valid JSON'}")
    assert results[0].message() == {"role": "tool", "name": "multiply", "content": "42"}
    runner.close()


def test_calls_of_one_rollout_run_in_order_and_rollouts_run_at_once():
    runner = ToolRunner(timeout_s=5, max_workers=8)
    box = Toolbox.from_config(_cfg(environment="tests.test_tools.CounterEnv"))
    work = []
    for _ in range(4):
        tools, env = box.for_rollout()
        env.reset(target=3)
        work.append((tools, [ToolCall("increment", {"step": 1}), ToolCall("increment", {"step": 2})]))
    results, _ = runner.run(work)
    assert [[r.content for r in rs] for rs in results] == [["1", "3"]] * 4  # in order, each its own state
    slow = [({"sleepy": sleepy}, [ToolCall("sleepy", {"seconds": 0.4})]) for _ in range(4)]
    _, seconds = runner.run(slow)
    assert seconds < 1.2  # 4 x 0.4 s at once, not one after the other
    runner.close()


# --- the tool result's tokens, against TRL's own method ------------------------------------------
@pytest.fixture(scope="module")
def qwen_tok(tiny_model):
    """The tiny character tokenizer with Qwen2.5's real chat template (as TRL ships it)."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = qwen2_5_chat_template
    tok.eos_token = "<|im_end|>"  # as Qwen2.5-Instruct's tokenizer has it
    return tok


def test_the_tool_suffix_is_trls(qwen_tok):
    from trl import GRPOTrainer

    from grpo_cli.tools.loop import ToolSuffix

    messages = [{"role": "tool", "name": "multiply", "content": "1776"}, {"role": "tool", "name": "multiply", "content": "2"}]
    trainer = SimpleNamespace(processing_class=qwen_tok, _tokenizer=qwen_tok, _is_vlm=False, chat_template=None,
                              chat_template_kwargs={})
    trl_ids = GRPOTrainer._get_tool_suffix_ids(trainer, messages)
    ours = ToolSuffix(qwen_tok)(messages, ended_with=qwen_tok.convert_tokens_to_ids("<|im_end|>"))
    assert ours == trl_ids
    assert qwen_tok.decode(ours) == ("\n<|im_start|>user\n<tool_response>\n1776\n</tool_response>\n<tool_response>\n2\n"
                                     "</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_a_template_that_rewrites_the_assistant_turn_is_refused(qwen_tok):
    import copy

    from grpo_cli.tools.loop import ToolSuffix

    tok = copy.deepcopy(qwen_tok)
    # Drops the tool calls of an assistant turn once a tool answered (some "thinking" templates do this).
    tok.chat_template = ("{% for m in messages %}{% if m.role == 'assistant' and loop.nextitem is defined %}"
                         "<|im_start|>assistant\n<|im_end|>\n{% elif m.role == 'assistant' %}<|im_start|>assistant\n"
                         "{{ m.tool_calls | tojson }}<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                         "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(UserError, match="not prefix-preserving"):
        ToolSuffix(tok)([{"role": "tool", "name": "f", "content": "1"}], ended_with=tok.convert_tokens_to_ids("<|im_end|>"))


# --- the learner: tool tokens carry no loss, KL or entropy, and are not counted ---------------------
def test_tool_tokens_weigh_exactly_zero_and_are_not_counted(tiny_overrides):
    from grpo_cli.learner.learner import RolloutBatch
    from tests.conftest import compose, make_learner

    cfg = compose(tiny_overrides + ["model.dtype=float32", "algo.beta=0.04", "algo.entropy_coef=0.01",
                                    "algo.aggregation._target_=grpo_cli.algo.aggregation.TokenMean"])
    learner = make_learner(cfg, total_optim_steps=4)
    # Two rollouts: [3 sampled | 4 tool | 2 sampled] and a plain 5-token one.
    completions = [[40, 41, 42, 50, 51, 52, 53, 43, 44], [45, 46, 47, 48, 49]]
    tool_mask = [[1, 1, 1, 0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]
    logp = [[-1.0] * 3 + [0.0] * 4 + [-1.0] * 2, [-1.0] * 5]
    batch = RolloutBatch.build([[10, 11], [10, 11]], completions, logp, torch.tensor([1.0, -1.0]), 0,
                               ["stop", "stop"], tool_mask)
    assert batch.completion_mask.tolist() == [[float(m) for m in tool_mask[0]], [1.0] * 5 + [0.0] * 4]
    mask = learner.loss_fn.loss_mask(batch.completion_mask, batch.truncated)
    weights = learner.aggregation.weights(mask)  # [2, 9]
    assert (weights[0, 3:7] == 0).all() and weights[0].sum() > 0
    assert torch.allclose(weights.sum(), torch.tensor(1.0))  # token mean over the 10 model tokens, not 14
    assert torch.allclose(weights[weights > 0], torch.tensor(0.1))
    from grpo_cli.algo.aggregation import SequenceMean

    seq = SequenceMean().weights(mask)  # each rollout's mean over its 5 model tokens, not its 9 tokens
    assert torch.allclose(seq[0, [0, 1, 2, 7, 8]], torch.tensor(0.1)) and (seq[0, 3:7] == 0).all()
    # The gradient of the whole loss (objective + beta * KL - coef * entropy) w.r.t. each token's log-prob.
    from grpo_cli.algo.loss import LossInputs

    logprobs = torch.full((2, 9), -1.0, requires_grad=True)
    entropy = torch.full((2, 9), 2.0, requires_grad=True)
    x = LossInputs(logprobs, logprobs.detach() + 0.1, batch.sampler_logp, torch.full((2, 9), -1.2), batch.advantages,
                   mask, entropy)
    loss, stats = learner.loss_fn(x, weights)
    loss.backward()
    assert (logprobs.grad[0, 3:7] == 0).all() and (entropy.grad[0, 3:7] == 0).all()
    assert (logprobs.grad[0, :3] != 0).all() and (entropy.grad[0, :3] != 0).all()
    assert float(stats.tokens) == 10.0  # KL and entropy means are over model tokens only
