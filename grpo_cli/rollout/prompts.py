"""Prompts from a hub dataset or a local file, formatted for the model, in a resumable seeded order."""

from __future__ import annotations

import json
import string
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
from omegaconf import DictConfig

from grpo_cli.errors import UserError
from grpo_cli.hub import use_cache_if_offline

_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(UserError):
    pass


def load_table(path: str, name: str | None = None, split: str = "train", key: str = "data.path") -> datasets.Dataset:
    """A local .jsonl/.json/.parquet/.csv file, or a split of a hub dataset."""
    local = Path(path).expanduser()
    if local.exists():
        fmt = _LOCAL_FORMATS.get(local.suffix)
        if fmt is None:
            raise DataError(f"{key}={path!r}: unsupported file type {local.suffix!r}; use one of {', '.join(_LOCAL_FORMATS)}")
        return _load_local(local, fmt, key, path)
    use_cache_if_offline()
    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as err:
        raise DataError(
            f"{key}={path!r}: could not load split {split!r} from the Hugging Face hub "
            f"({type(err).__name__}); offline? pass {key}=/path/to/file.jsonl in the same schema"
        ) from err


def _load_local(local: Path, fmt: str, key: str, path: str) -> datasets.Dataset:
    """A local file, or a one-line DataError saying what is wrong with it (and where)."""
    try:
        if local.is_dir():
            raise IsADirectoryError(f"{local} is a directory")
        with open(local, "rb") as f:  # unreadable files fail here, with the OS's reason
            empty = not f.read(1)
        if empty:
            raise DataError(f"{key}={path!r}: the file is empty")
        if fmt == "json":
            _check_json_lines(local, key, path)
        table = datasets.load_dataset(fmt, data_files=str(local), split="train")
    except DataError:
        raise
    except Exception as err:
        cause = err.__cause__ or err
        msg = (str(cause).splitlines() or [""])[0][:200]
        raise DataError(f"{key}={path!r}: cannot read it ({type(cause).__name__}: {msg})") from err
    if len(table) == 0:
        raise DataError(f"{key}={path!r}: the file has no rows")
    return table


def _check_json_lines(local: Path, key: str, path: str) -> None:
    """Name the first line of a .jsonl file that is not UTF-8 or not a JSON object."""
    if local.suffix != ".jsonl":
        return
    with open(local, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                raise DataError(f"{key}={path!r}: line {n} is not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r})") from None
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{key}={path!r}: line {n} is not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{key}={path!r}: line {n} is a JSON {type(row).__name__}, not an object with columns")


def load_splits(cfg: DictConfig) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Training rows and evaluation rows (or None) as `data` describes them."""
    train = load_table(cfg.path, cfg.name, cfg.train_split)
    if cfg.eval_path is not None:  # a local file, or another hub dataset (its `eval_split`)
        return train, load_table(cfg.eval_path, split=cfg.eval_split or "train", key="data.eval_path")
    if Path(cfg.path).expanduser().exists():
        if cfg.eval_holdout <= 0:
            return train, None
        # A fixed split seed, not the run seed: every run of a sweep evaluates on the same rows.
        parts = train.train_test_split(test_size=cfg.eval_holdout, seed=1234)
        return parts["train"], parts["test"]
    if cfg.eval_split is None:
        return train, None
    return train, load_table(cfg.path, cfg.name, cfg.eval_split)


def prepare_splits(cfg: DictConfig, fmt: PromptFormatter, max_model_len: int, eval_max_rows: int | None
                   ) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The training rows and the evaluation rows (None: no evaluation) a run uses: loaded, their
    columns checked, prompts too long for the engine skipped, evaluation cut to `eval_max_rows`."""
    train_rows, eval_rows = load_splits(cfg)
    fmt.check_columns(train_rows, "training")
    train_rows = fmt.fit(train_rows, "training", max_model_len)
    if eval_rows is not None:
        fmt.check_columns(eval_rows, "evaluation")
        eval_rows = fmt.fit(eval_rows, "evaluation", max_model_len)
        eval_rows = eval_rows.select(range(min(len(eval_rows), eval_max_rows or len(eval_rows))))
    return train_rows, eval_rows


class PromptFormatter:
    """Row -> prompt text: the template, then the tokenizer's chat template when it has one.

    Chat messages (TRL's conversational format) and prompts that offer tools always go through the
    chat template, whatever `data.use_chat_template` says (that key is for plain-text prompts);
    `tools` are the JSON schemas of the run's tools, which the chat template shows the model."""

    def __init__(self, cfg: DictConfig, tokenizer, tools: list[dict] | None = None):
        self.cfg, self.tokenizer, self.tools = cfg, tokenizer, tools or None
        self.has_template = getattr(tokenizer, "chat_template", None) is not None
        if self.tools and not self.has_template:
            raise DataError("tools.funcs/tools.environment need a chat template to show the model its tools: the "
                            "tokenizer of model.path has none (use an Instruct model, or set model.tokenizer)")
        self.chat = self.has_template and (cfg.use_chat_template or self.tools is not None)

    def check_columns(self, table: datasets.Dataset, what: str) -> None:
        if self.cfg.prompt_column not in table.column_names:
            raise DataError(
                f"data.prompt_column={self.cfg.prompt_column!r} is not a column of the {what} data; "
                f"columns: {', '.join(table.column_names)}"
            )
        if len(table) and isinstance(table[0][self.cfg.prompt_column], list):
            self._chat_messages()
        for name in self._template_fields():
            if name != "prompt" and name not in table.column_names:
                raise DataError(
                    f"data.prompt_template={self.cfg.prompt_template!r} names {{{name}}}, which is not a column "
                    f"of the {what} data; columns: {', '.join(table.column_names)} (and {{prompt}})"
                )

    def _chat_messages(self) -> None:
        """The prompts are chat messages: they go through the chat template, which must exist."""
        if not self.has_template:
            raise DataError(f"data.prompt_column={self.cfg.prompt_column!r} holds chat messages, which need a chat "
                            "template: the tokenizer of model.path has none (use an Instruct model's tokenizer, or "
                            "set model.tokenizer)")
        self.chat = True

    def _template_fields(self) -> list[str]:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.cfg.prompt_template) if f is not None]
        except ValueError as err:
            raise DataError(f"data.prompt_template={self.cfg.prompt_template!r} is not a valid format string: {err}") from None
        for f in fields:
            if not f.isidentifier():
                raise DataError(f"data.prompt_template={self.cfg.prompt_template!r}: {{{f}}} must be a plain column name")
        return fields

    def fit(self, table: datasets.Dataset, what: str, max_model_len: int) -> datasets.Dataset:
        """Rows whose prompt leaves room for a completion in the engine; the rest are skipped, with a warning."""
        lengths = [len(ids) for ids in self.encode([self(r) for r in table.to_list()])]
        keep = [i for i, n in enumerate(lengths) if n < max_model_len]
        if not keep:
            raise DataError(f"every {what} prompt is at least sampler.max_model_len={max_model_len} tokens long "
                            f"(shortest: {min(lengths)}); raise sampler.max_model_len or shorten the prompts")
        if len(keep) < len(table):
            print(f"grpo-train: warning: skipped {len(table) - len(keep)} of {len(table)} {what} prompts longer than "
                  f"sampler.max_model_len={max_model_len} tokens", file=sys.stderr, flush=True)
            table = table.select(keep)
        return table

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids, made once and given to both sampler and learner so they see the same prompt."""
        # A chat template already writes the special tokens (BOS and all) into the text.
        return self.tokenizer(prompts, add_special_tokens=not self.chat)["input_ids"]

    def __call__(self, row: dict) -> str:
        """The text the model sees: `messages(row)` through the chat template, or the plain text."""
        if not self.chat and isinstance(row[self.cfg.prompt_column], list):
            self._chat_messages()
        if not self.chat:
            return self.cfg.prompt_template.format(**{**row, "prompt": row[self.cfg.prompt_column]})
        return self.render(self.messages(row))

    def messages(self, row: dict) -> list[dict]:
        """The row as chat messages. A string prompt goes through `prompt_template` into one user
        message; a list of chat messages is used as is; `system_prompt` is added unless the
        messages bring their own system message."""
        value = row[self.cfg.prompt_column]
        if isinstance(value, list):
            messages = [dict(m) for m in value]
        else:
            messages = [{"role": "user", "content": self.cfg.prompt_template.format(**{**row, "prompt": value})}]
        if self.cfg.system_prompt and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return messages

    def render(self, messages: list[dict]) -> str:
        """Messages as the prompt text, with the run's tools and the assistant's turn opened."""
        return self.tokenizer.apply_chat_template(messages, tools=self.tools, tokenize=False, add_generation_prompt=True)


def _repeat(values: list, n: int) -> list:
    return [v for v in values for _ in range(n)]


@dataclass
class PromptBatch:
    prompts: list[str]  # [B] formatted prompt texts, what the model sees
    columns: dict[str, list]  # every dataset column, each [B], passed to the rewards
    conversational: bool = False  # the prompt column holds chat messages (TRL's conversational format)
    prompt_column: str = "prompt"
    index: list[int] | None = None  # [B] each row's global index among the step's prompts (its sampling seed)

    def repeat(self, n: int) -> PromptBatch:
        """Each row n times in a row (prompt-major, like Rollouts: completion j of row i is at i * n + j)."""
        return PromptBatch(_repeat(self.prompts, n), {k: _repeat(v, n) for k, v in self.columns.items()},
                           self.conversational, self.prompt_column, self.index and _repeat(self.index, n))

    @property
    def reward_prompts(self) -> list:
        """What rewards get as `prompts` (as TRL passes them): the chat messages of a conversational
        dataset, the formatted prompt text otherwise."""
        return self.columns[self.prompt_column] if self.conversational else self.prompts

    def reward_completions(self, texts: list[str]) -> list:
        """What rewards get as `completions`: one assistant message per completion for a
        conversational dataset (as TRL passes them), the text otherwise."""
        return [[{"role": "assistant", "content": t}] for t in texts] if self.conversational else texts


def as_batch(table: datasets.Dataset, format_prompt: PromptFormatter, index: list[int] | None = None) -> PromptBatch:
    """`index`: each row's global index among the step's prompts (every rank's share counted)."""
    rows = table.to_list()
    column = format_prompt.cfg.prompt_column
    conversational = bool(rows) and isinstance(rows[0][column], list)
    return PromptBatch([format_prompt(r) for r in rows], {c: table[c] for c in table.column_names},
                       conversational, column, index)


class PromptStream:
    """Batches of B rows, epoch after epoch, each epoch shuffled with (seed, epoch).

    The position is two integers (epoch, offset), so a run can save and restore it exactly.
    """

    def __init__(self, table: datasets.Dataset, batch_size: int, seed: int, shuffle: bool):
        if len(table) < batch_size:
            raise DataError(f"train.prompts_per_step={batch_size} exceeds the {len(table)} training rows")
        self.table, self.batch_size, self.seed, self.shuffle = table, batch_size, seed, shuffle
        self.epoch, self.offset = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.table) // self.batch_size  # the last partial batch of an epoch is dropped

    def _order(self) -> datasets.Dataset:
        if getattr(self, "_ordered_epoch", None) != self.epoch:  # one shuffle per epoch, not per batch
            self._ordered = self.table.shuffle(seed=self.seed + self.epoch) if self.shuffle else self.table
            self._ordered_epoch = self.epoch
        return self._ordered

    def next(self) -> datasets.Dataset:
        if self.offset + self.batch_size > len(self.table):
            self.epoch, self.offset = self.epoch + 1, 0
        rows = self._order().select(range(self.offset, self.offset + self.batch_size))
        self.offset += self.batch_size
        return rows

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
