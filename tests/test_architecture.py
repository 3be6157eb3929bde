"""The package's shape, checked from its source: no import cycle (function-local imports count),
nothing imports another module's `_private` names, and no demo or test code inside the product."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "grpo_cli"


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    """(module, names) of every grpo_cli import in the file, wherever it stands (functions too)."""
    out, me = [], _module(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("grpo_cli")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("grpo_cli"):
                continue
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{base}.{alias.name}"
                out.append((sub, []) if sub in known else (base, [alias.name]))
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        targets = set()
        for target, _ in _imports(path, known):
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if m.endswith("__init__") or m == "grpo_cli":
                continue
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_between_modules():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_no_import_cycle_between_stage_packages():
    """The folders are the architecture: stage packages import each other one way only."""
    packages: dict[str, set[str]] = {}
    for name, targets in _graph().items():
        src = name.split(".")[1] if name.count(".") >= 1 else name
        for t in targets:
            dst = t.split(".")[1] if t.count(".") >= 1 else t
            if dst != src:
                packages.setdefault(src, set()).add(dst)
    assert _cycle(packages) is None, " -> ".join(_cycle(packages))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_imports_another_modules_private_names():
    mods = _modules()
    private = [(name, target, n) for name, path in mods.items() for target, names in _imports(path, set(mods))
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_no_test_hooks_or_demo_code_in_the_package():
    text = {p: p.read_text() for p in PKG.rglob("*.py")}
    assert not [p for p, t in text.items() if "GRPO_CLI_TEST" in t or "pause_for_test" in t]
    assert not [p for p in text if p.stem in ("tiny", "demo")] and not (PKG / "tasks").exists()
