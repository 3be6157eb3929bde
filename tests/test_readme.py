"""Every code block of README.md works as written (issue 25.5).

python blocks are exec'd and each reward function they define is called on both of TRL's prompt
formats (they must agree); yaml blocks parse, and a recipe block composes from its own
`--config-dir`; each `grpo-train` / `grpo-eval` command of a bash block composes and validates as
`--cfg job` would (in-process: the same `compose` + `validate` the CLI runs).

Not composed, and why: `make ...` and `source ...` (set-up, not commands of ours), and
`.venv/bin/python scripts/gpu_check.py` (builds models; needs a GPU), and `resume=RUN_DIR` (needs
that run's checkpoint: tests/test_resume.py runs resumes). Commands whose paths the
README writes as `...` are placeholders. The `.cache/demo/*` and `outputs/try` paths that `make
demo` and the README's first run write are stood in for by empty files. Nothing is downloaded:
hub ids are only checked to be hub ids.
"""

from __future__ import annotations

import inspect
import itertools
import re
import shlex
import sys

import pytest
import yaml

from tests.conftest import REPO, compose

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.S | re.M)
SKIP = ("make ", "source ", ".venv/bin/python ")


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


def _commands() -> list[list[str]]:
    """Each grpo-train / grpo-eval command line of the bash blocks, as argv (continuations joined)."""
    out = []
    for body in _blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith(SKIP) or "..." in line or re.search(r"resume=(?!auto)", line):
                continue
            argv = shlex.split(line)
            while "=" in argv[0] and not argv[0].startswith(("+", "-")):  # PYTHONPATH=. grpo-train
                argv.pop(0)
            argv[0] = argv[0].removeprefix(".venv/bin/")
            assert argv[0] in ("grpo-train", "grpo-eval"), f"README command not tested: {line}"
            out.append(argv)
    return out


def test_readme_has_the_blocks_this_checks():
    assert _blocks("python") and _blocks("yaml") and len(_commands()) >= 15


def _call(fn, texts: list[str], conv: bool) -> list:
    """`fn` called as the trainer calls rewards, on a plain-text or a conversational batch."""
    prompts = [[{"role": "user", "content": "2+2="}]] * 2 if conv else ["2+2="] * 2
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conv else texts
    columns = {p: ["4", "4"] for p in inspect.signature(fn).parameters
               if p not in ("completions", "prompts", "completion_ids", "kwargs")}
    return fn(prompts=prompts, completions=completions, completion_ids=[[1], [2]], **columns)


def _check_tools(scope: dict) -> None:
    """Every function of a README block is a tool the model can be shown; every class an environment."""
    from grpo_cli.tools.registry import Toolbox, as_tool

    funcs = [as_tool(f, "README") for f in scope.values() if inspect.isfunction(f)]
    envs = [c for c in scope.values() if inspect.isclass(c)]
    assert funcs or envs
    for env in envs:
        box = Toolbox([], env)
        tools, instance = box.for_rollout()
        instance.reset(prompt="x")
        assert tools and box.reward_name == env.__name__


@pytest.mark.parametrize("conversational", [False, True])
def test_python_blocks_rewards_work_on_both_prompt_formats(conversational):
    texts = ["4", "x" * 300]
    for body in _blocks("python"):
        scope: dict = {}
        exec(compile(body, "README.md", "exec"), scope)
        rewards = {n: f for n, f in scope.items() if inspect.isfunction(f) and "completions" in inspect.signature(f).parameters}
        if not rewards:  # the tools block: its functions are tools, its classes environments
            _check_tools(scope)
            continue
        for name, fn in rewards.items():
            got = _call(fn, texts, conversational)
            assert len(got) == 2 and all(isinstance(v, float) for v in got), (name, got)
            assert got == _call(fn, texts, False), f"README reward {name} scores the two prompt formats differently"


def _stand_ins(root):
    for d in (".cache/demo/sft-30", "outputs/try/checkpoints/final"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in ("train.jsonl", "eval.jsonl"):
        (root / ".cache/demo" / f).write_text("")


def _expand(argv: list[str]) -> list[list[str]]:
    """`-m a=1,2 b=3,4`: every job of the sweep."""
    if "-m" not in argv:
        return [argv]
    args = [a for a in argv if a != "-m"]
    choices = [[a.split("=", 1)[0] + "=" + v for v in a.split("=", 1)[1].split(",")] if "=" in a and "," in a else [a]
               for a in args]
    return [list(c) for c in itertools.product(*choices)]


def _validate(argv: list[str], searchpath: list[str]) -> None:
    from grpo_cli.config.validate import validate

    args = argv[1:] + (["eval_only=true"] if argv[0] == "grpo-eval" else [])
    config_dir = [args[i + 1] for i, a in enumerate(args) if a == "--config-dir"]
    args = [a for i, a in enumerate(args) if a != "--config-dir" and (i == 0 or args[i - 1] != "--config-dir")]
    args = [a for a in args if a not in ("--cfg", "job", "--help")]
    extra = [f"hydra.searchpath=[{','.join('file://' + p for p in searchpath + config_dir)}]"] if config_dir else []
    validate(compose(args + extra))


def test_yaml_and_bash_blocks_compose(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _stand_ins(tmp_path)
    (tmp_path / "my_rewards.py").write_text(_blocks("python")[0])  # the file the README saves
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rewards", None)
    for body in _blocks("yaml"):
        doc = yaml.safe_load(body)
        assert isinstance(doc, dict) and "defaults" in doc
        match = re.search(r"--config-dir (\S+) \+recipe=(\S+)", body)
        assert match, "a README recipe block names the command that runs it"
        recipe = tmp_path / match[1] / "recipe" / f"{match[2]}.yaml"
        recipe.parent.mkdir(parents=True)
        recipe.write_text(body)
    for argv in _commands():
        for job in _expand(argv):
            try:
                _validate(job, [])
            except Exception as err:
                pytest.fail(f"README command {' '.join(argv)}: {type(err).__name__}: {err}")


def _table_options(group: str) -> set[str]:
    row = next(line for line in README.splitlines() if line.startswith(f"| `{group}` |"))
    return set(re.findall(r"`([^`]+)`", row.split("|")[2]))


def test_config_groups_table_lists_every_option():
    for folder in sorted(p for p in (REPO / "conf").rglob("*") if p.is_dir() and any(p.glob("*.yaml"))):
        group = folder.relative_to(REPO / "conf").as_posix()
        options = {p.stem for p in folder.glob("*.yaml")}
        assert options <= _table_options(group), f"README's config-groups table misses {group}: {options - _table_options(group)}"


def test_readme_and_docs_point_at_no_file_users_lack():
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        assert "shared/" not in path.read_text(), f"{path.name} points at shared/, which is not in the repository"
