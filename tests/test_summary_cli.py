"""`grpo-summary --help` explains the command (it said "--help: no metrics.jsonl in it")."""

from __future__ import annotations

import pytest

from grpo_cli.observe.sweep import main


def test_grpo_summary_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: grpo-summary [-h] SWEEP_DIR") and "summary.csv" in out


def test_grpo_summary_without_a_dir_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
