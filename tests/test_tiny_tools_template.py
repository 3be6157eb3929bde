"""The tool-capable tiny tokenizer (examples.demo.tiny, `tools=True`): tool tokens, chat template, and
the default tokenizer left as it was."""

from __future__ import annotations

import hashlib
import json

import pytest
from transformers import AutoTokenizer

from examples.demo import tiny

CALL = {"type": "function", "function": {"name": "multiply", "arguments": {"a": 37, "b": 48}}}
CALL_TEXT = '<tool_call>{"name":"multiply","arguments":{"a":37,"b":48}}</tool_call>'
# sha256 of the default tokenizer files as save_tiny wrote them before `tools` existed
# (transformers 5.19, tokenizers 0.23): the default output must stay byte-identical.
DEFAULT_FILES = {
    "chat_template.jinja": "f91864928fccff928b3068ca784db6275e655e400ccbb28f61d92c0090caf3b3",
    "tokenizer.json": "16dbce3d11a10449cf00b3da7a0f20dab58358d61a44c771cee43700c8534382",
    "tokenizer_config.json": "cdbd918d74df0ec90484c52f33c1752e3c00f45f7e3fb400626e6684850c5ab6",
}
SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "seed": 3}


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first term.
        b: The second term.
    """
    return a + b


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-tools")
    return tiny.save_tiny(root / "default", **SIZES), tiny.save_tiny(root / "tools", tools=True, **SIZES)


@pytest.fixture(scope="module")
def tok(dirs):
    """The saved tool-capable tokenizer as vLLM and the learner load it (Qwen2Tokenizer in transformers 5)."""
    return AutoTokenizer.from_pretrained(dirs[1])


def _render(tok, messages, tools=(multiply,), **kw) -> str:
    return tok.apply_chat_template(messages, tools=list(tools) or None, tokenize=False, **kw)


def test_vocab_stays_128_and_the_tool_tokens_take_the_last_reserved_ids(tok):
    assert len(tok) == tiny.VOCAB_SIZE == 128
    assert tok.convert_tokens_to_ids(["<tool_call>", "</tool_call>"]) == [126, 127]
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|reserved_26|>"]) == [96, 97, 98, 125]
    assert all(tok.convert_ids_to_tokens(i) is not None for i in range(128))
    assert len(tiny.build_tokenizer(tools=True)) == 128


def test_tool_tokens_round_trip_and_survive_skip_special_tokens(tok):
    text = f"x{CALL_TEXT}y"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(126) == ids.count(127) == 1 and len(ids) == len(text) - len("<tool_call></tool_call>") + 2
    assert tok.decode(ids) == text
    # vLLM detokenizes with skip_special_tokens=True: the call must stay in the text, the turn markers not
    chat = tok.encode(f"<|im_start|>{CALL_TEXT}<|im_end|>", add_special_tokens=False)
    assert tok.decode(chat, skip_special_tokens=True) == CALL_TEXT
    assert tiny.build_tokenizer(tools=True).encode(text) == ids  # in memory as saved


def test_the_template_renders_tools_calls_and_results(tok):
    user = {"role": "user", "content": "37*48="}
    prompt = _render(tok, [user], add_generation_prompt=True)
    assert prompt == ("<|im_start|>system\ntools: multiply<|im_end|>\n<|im_start|>user\n37*48=<|im_end|>\n"
                      "<|im_start|>assistant\n")
    calls = [user, {"role": "assistant", "content": "", "tool_calls": [CALL]},
             {"role": "tool", "name": "multiply", "content": "1776"}, {"role": "assistant", "content": "1776"}]
    assert _render(tok, calls) == prompt + (f"{CALL_TEXT}<|im_end|>\n<|im_start|>tool\n1776<|im_end|>\n"
                                            "<|im_start|>assistant\n1776<|im_end|>\n")


def test_a_system_message_is_merged_and_arguments_may_be_a_json_string(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1*2="},
                {"role": "assistant", "content": "ok",
                 "tool_calls": [{"function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}, CALL]}]
    assert _render(tok, messages, tools=(multiply, add)) == (
        "<|im_start|>system\nBe brief.\ntools: multiply, add<|im_end|>\n<|im_start|>user\n1*2=<|im_end|>\n"
        '<|im_start|>assistant\nok<tool_call>{"name":"add","arguments":{"a": 1, "b": 2}}</tool_call>'
        f"{CALL_TEXT}<|im_end|>\n")


def test_schemas_render_like_callables(tok):
    from transformers.utils import get_json_schema

    user = [{"role": "user", "content": "2*3="}]
    assert _render(tok, user, tools=[get_json_schema(multiply)]) == _render(tok, user)


def test_without_tools_it_renders_as_the_default_template(tok, dirs):
    default = AutoTokenizer.from_pretrained(dirs[0])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    for gen in (False, True):
        assert _render(tok, messages, tools=(), add_generation_prompt=gen) == \
            _render(default, messages, tools=(), add_generation_prompt=gen)


def _suffix_ids(tok, tool_messages):
    """TRL's `_get_tool_suffix_ids`: the tokens that turn a completion ending in <|im_end|> into the next prompt."""
    dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": [CALL]}]
    prefix = tok.apply_chat_template(dummy, tools=[multiply], return_dict=False)
    full = tok.apply_chat_template(dummy + tool_messages, tools=[multiply], add_generation_prompt=True, return_dict=False)
    end = max(i for i, t in enumerate(prefix) if t == tok.convert_tokens_to_ids("<|im_end|>"))
    assert full[: end + 1] == prefix[: end + 1]  # prefix preserving
    return full[end + 1:]


def test_prefix_preserving_so_tool_turns_append_by_token_concatenation(tok):
    tool = [{"role": "tool", "name": "multiply", "content": "1776"}]
    assert tok.decode(_suffix_ids(tok, tool)) == "\n<|im_start|>tool\n1776<|im_end|>\n<|im_start|>assistant\n"
    # the concatenation is what rendering the whole conversation gives
    history = [{"role": "user", "content": "37*48="}]
    prompt = tok.apply_chat_template(history, tools=[multiply], add_generation_prompt=True, return_dict=False)
    completion = tok.encode(CALL_TEXT + "<|im_end|>", add_special_tokens=False)
    whole = tok.apply_chat_template(history + [{"role": "assistant", "content": "", "tool_calls": [CALL]}] + tool,
                                    tools=[multiply], add_generation_prompt=True, return_dict=False)
    assert prompt + completion + _suffix_ids(tok, tool) == whole
    for n in range(1, 4):  # and for longer histories: every rendering is a prefix of the next
        convo = history + [{"role": "assistant", "content": "", "tool_calls": [CALL]}, *tool] * n
        shorter = _render(tok, convo[:-1])
        assert _render(tok, convo, add_generation_prompt=True).startswith(shorter)


def test_default_save_tiny_output_is_unchanged(dirs):
    default, tools = dirs
    for name, digest in DEFAULT_FILES.items():
        assert hashlib.sha256((default / name).read_bytes()).hexdigest() == digest, name
    for name in ("config.json", "generation_config.json", "model.safetensors"):  # the same model either way
        assert (default / name).read_bytes() == (tools / name).read_bytes(), name
    added = {t["content"]: t["special"] for t in json.loads((tools / "tokenizer.json").read_text())["added_tokens"]}
    assert added["<tool_call>"] is added["</tool_call>"] is False and "<|reserved_27|>" not in added
