"""Tiny local checkpoints (character tokenizer + random Qwen2) for tests, the demo and benchmarks.

No model hub is reachable on the machines this project is built on, so everything that needs a
"real" checkpoint directory (transformers `from_pretrained`, `vllm.LLM(model=...)`) uses one
written here with `save_pretrained`.

    python -m examples.demo.tiny /tmp/tiny-qwen2 --hidden-size 256 --layers 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VOCAB_SIZE = 128
# One token per character: newline + printable ASCII (space .. ~) = 96 ids (0..95).
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
# Ids 96..98 are the real specials; 99..127 are reserved fillers so that every id the model can
# sample (its vocab is 128) decodes to something: an undefined id would break detokenizers.
SPECIALS = [EOS, IM_START, IM_END] + [
    f"<|reserved_{i}|>" for i in range(VOCAB_SIZE - len(CHARS) - 3)
]
# Qwen2's pre-tokenizer split (transformers' Qwen2Tokenizer re-applies it on load).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Tool calling, as Qwen2.5 has it: `<tool_call>` / `</tool_call>` are added tokens that are NOT special,
# so they stay in text decoded with skip_special_tokens=True (what vLLM returns). With `tools=True` they
# take the last two reserved ids (126, 127), so the vocab stays 128.
TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"
# CHAT_TEMPLATE plus tools, compact because every character is a token: a system turn
# `tools: NAME, NAME` (names only; a system message's content goes on the line above it), an
# assistant turn with `tool_calls` written `<tool_call>{"name":...,"arguments":...}</tool_call>`
# after its content, a tool result as a turn of role `tool`. Rendering messages M, then M + more
# messages, gives the first text as a prefix (what appending tool turns by token concatenation needs).
TOOLS_CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n' }}{% endif %}"
    "{{ 'tools: ' }}{% for t in tools %}{{ (t['function'] or t)['name'] }}{% if not loop.last %}, {% endif %}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{ '<|im_start|>assistant\n' + (message['content'] or '') }}"
    "{% for call in message['tool_calls'] %}{% set f = call['function'] or call %}"
    "{{ '<tool_call>{\"name\":' + f['name'] | tojson + ',\"arguments\":' }}"
    "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}{{ f['arguments'] | tojson(separators=(',', ':')) }}"
    "{% endif %}{{ '}</tool_call>' }}{% endfor %}{{ '<|im_end|>\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>tool\n' + message['content'] | string + '<|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_level(c: str) -> str:
    """GPT-2 byte-level alphabet for an ASCII char: '!'..'~' map to themselves, bytes 0..32
    (the first 33 non-printable bytes) to chr(256 + b), so ' ' -> 'Ġ' and '\\n' -> 'Ċ'."""
    b = ord(c)
    return chr(256 + b) if b <= 32 else c


def build_tokenizer(vocab_size: int = VOCAB_SIZE, tools: bool = False) -> PreTrainedTokenizerFast:
    """Character-level fast tokenizer with a Qwen-style chat template.

    transformers 5.x loads any checkpoint whose config says model_type "qwen2" with its own
    Qwen2Tokenizer, which ignores the saved pipeline and rebuilds Qwen2's (NFC normalizer,
    regex split + ByteLevel pre-tokenizer, ByteLevel decoder) around the saved BPE vocab. So the
    vocab is written in the byte-level alphabet and this tokenizer uses that same pipeline: the
    in-memory tokenizer, AutoTokenizer.from_pretrained and vLLM then all tokenize identically.
    A BPE with no merges keeps one token per character; the ByteLevel decoder fuses them back,
    so decode(encode(s)) == s exactly for printable ASCII + newline.

    A `vocab_size` above 128 (a real model's shape, e.g. Qwen2.5's 151,936) fills the ids between
    the characters and the three specials with filler tokens `<fN>`: a BPE without merges never
    forms them from text, but every id the model may sample decodes.

    eos = pad = `<|endoftext|>` (as in Qwen2.5 base models). A chat turn ends with
    `<|im_end|>`, which the saved generation_config lists as a second eos, so transformers'
    generate and vLLM stop on either.

    `tools=True` makes it tool-capable: the added (not special) tokens `<tool_call>` and
    `</tool_call>` take the last two ids, and the chat template is TOOLS_CHAT_TEMPLATE.
    """
    vocab = {_byte_level(c): i for i, c in enumerate(CHARS)}
    if vocab_size < VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size}: the character tokenizer needs >= {VOCAB_SIZE}")
    tool_tokens = [TOOL_CALL, TOOL_CALL_END] if tools else []
    # At 128 the reserved fillers are specials and the tool tokens take the last two of their ids.
    specials = SPECIALS[: len(SPECIALS) - len(tool_tokens)] if vocab_size == VOCAB_SIZE else [EOS, IM_START, IM_END]
    for i in range(vocab_size - len(CHARS) - len(specials) - len(tool_tokens)):
        vocab[f"<f{i}>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Added specials get ids len(CHARS).. in order and are matched before the BPE model runs.
    tok.add_special_tokens(specials)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in tool_tokens])
    assert tok.get_vocab_size() == vocab_size
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=TOOLS_CHAT_TEMPLATE if tools else CHAT_TEMPLATE,
        # Default cleanup would turn "a ." into "a." and break the exact round trip.
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def build_config(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 256,
    intermediate_size: int = 1024,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 512,
    **extra,
) -> Qwen2Config:
    """Qwen2 config (GQA, tied embeddings, fp32) sized for CPU tests; `extra` goes to Qwen2Config."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        **extra,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **sizes) -> Qwen2ForCausalLM:
    """Randomly initialised Qwen2ForCausalLM (fp32, vocab 128); same seed -> same weights.

    `sizes` are build_config's keyword arguments (hidden_size, num_layers, ...).
    """
    config = build_config(tokenizer, **sizes)
    # Seeded init without disturbing the caller's global RNG stream (fork_rng restores it).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    # Chat-style stop: end of an assistant turn (<|im_end|>) or end of text.
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return model.eval()


def save_tiny(out_dir: str | Path, vocab_size: int = VOCAB_SIZE, tools: bool = False, **sizes) -> Path:
    """Write model, tokenizer and generation_config to out_dir; returns it as a Path.

    `sizes` are build_model's keyword arguments (hidden_size, num_layers, seed, ...). The folder
    loads with AutoModelForCausalLM / AutoTokenizer.from_pretrained and with vllm.LLM(model=...).
    `tools=True` saves the tool-capable tokenizer (build_tokenizer); the model is the same.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size, tools=tools)
    model = build_model(tokenizer, **sizes)
    model.save_pretrained(out)  # also writes generation_config.json
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m examples.demo.tiny OUT_DIR [--hidden-size N --layers N ...]."""
    p = argparse.ArgumentParser(prog="python -m examples.demo.tiny", description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--intermediate-size", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--max-positions", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = save_tiny(
        a.out_dir, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
        num_layers=a.layers, num_heads=a.heads, num_kv_heads=a.kv_heads, seed=a.seed,
        max_position_embeddings=a.max_positions,
    )
    model = Qwen2ForCausalLM.from_pretrained(out)
    print(f"{out} ({sum(p.numel() for p in model.parameters()):,} parameters)")


if __name__ == "__main__":
    main()
