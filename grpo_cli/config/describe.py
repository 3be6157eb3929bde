"""`grpo-train --help`'s option list: every key of the schema, its value and its docstring.

The docstrings are read from `schema.py`'s source (the string right under each field), so the help
and the schema cannot drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import typing

from omegaconf import DictConfig, OmegaConf

from grpo_cli.config import schema


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its docstring, on one line} of a dataclass of `schema.py`."""
    tree = ast.parse(inspect.getsource(schema))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__).body
    docs = {}
    for field, doc in zip(body, body[1:]):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
            docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


def _value(node: typing.Any) -> str:
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return json.dumps(OmegaConf.to_container(node, resolve=False))
    return "null" if node is None else str(node).lower() if isinstance(node, bool) else str(node)


def describe(cfg: DictConfig | None, cls: type = schema.Config, prefix: str = "") -> list[str]:
    """`section.key = value  # docstring` for every schema key; values from `cfg` (a composed config)."""
    lines = []
    docs = field_docs(cls)
    for name, hint in typing.get_type_hints(cls).items():
        sub = None if cfg is None else cfg._get_node(name) if name in cfg else None
        if dataclasses.is_dataclass(hint):
            lines += describe(sub if isinstance(sub, DictConfig) else None, hint, f"{prefix}{name}.")
            continue
        if sub is not None:
            value = _value(sub if isinstance(sub, DictConfig) or OmegaConf.is_list(sub) else sub._value())
        else:
            default = next(f for f in dataclasses.fields(cls) if f.name == name)
            value = (_value(default.default_factory()) if default.default_factory is not dataclasses.MISSING  # type: ignore[misc]
                     else _value(default.default))
        doc = docs.get(name, "")
        lines.append(f"{prefix}{name} = {value}" + (f"  # {doc}" if doc else ""))
    return lines
