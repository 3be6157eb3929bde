"""The console shows the header, the bar, evals and the final table; library chatter goes to the log file."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from grpo_cli.observe.console import LOG_FILE, QUIET_ENV, route_logs
from tests.conftest import REPO


@pytest.fixture
def terminal(capsys):
    """Yields a function that puts a root console handler on this test's stderr (captured by
    capsys) and then returns what reached it; the handler is removed afterwards."""
    handlers = []

    def attach():
        handlers.append(logging.StreamHandler(sys.stderr))  # sys.stderr as the test body sees it
        logging.getLogger().addHandler(handlers[-1])

    yield attach, lambda: capsys.readouterr().err
    for h in handlers:
        logging.getLogger().removeHandler(h)


def _emit():
    logging.getLogger("vllm.model_executor.reload").warning("RotaryEmbedding: Failed to load weights")
    logging.getLogger("vllm.engine").info("Initializing a V1 LLM engine")
    logging.getLogger("vllm.engine").error("engine died")
    logging.getLogger("grpo_cli.rollout.prompts").warning("our own warning")


def test_library_logs_go_to_the_file_and_only_errors_and_ours_to_the_console(terminal, tmp_path):
    attach, console = terminal
    attach()
    log_file = route_logs(OmegaConf.create({"verbose": False}), tmp_path)
    _emit()
    assert log_file == tmp_path / LOG_FILE
    on_console = console()
    assert "engine died" in on_console and "our own warning" in on_console
    assert "RotaryEmbedding" not in on_console and "Initializing" not in on_console
    in_file = log_file.read_text()
    for text in ("RotaryEmbedding", "Initializing a V1 LLM engine", "engine died", "our own warning"):
        assert text in in_file


def test_verbose_shows_everything_on_the_console(terminal, tmp_path):
    attach, console = terminal
    attach()
    route_logs(OmegaConf.create({"verbose": True}), tmp_path)
    _emit()
    on_console = console()
    assert "RotaryEmbedding" in on_console and "Initializing" in on_console
    route_logs(OmegaConf.create({"verbose": False}), tmp_path)  # leave the process quiet again


@pytest.mark.engine
def test_a_run_console_fits_on_a_screen(tiny_overrides, tmp_path):
    """A real run from the CLI, W&B offline: header, evals, final table; no engine or W&B chatter."""
    args = [*tiny_overrides, "logger.wandb_mode=offline", "logger.progress=true", f"hydra.run.dir={tmp_path}"]
    # A clean environment: earlier in-process runs of this session set the quiet switches in os.environ.
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV} | {"WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, "-m", "grpo_cli", *args], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    console = out.stdout + out.stderr
    lines = [x for x in console.splitlines() if x.strip()]
    assert lines[0].startswith("grpo-train: model ") and "W&B     offline" in console
    assert "eval @ step 0: accuracy" in console and "held-out evaluation" in console
    for chatter in ("INFO", "WARNING", "RotaryEmbedding", "Weave", "wandb:", "Loading", "NUMA"):
        assert chatter not in console, (chatter, console)
    assert len(lines) <= 25, console
    log = (tmp_path / LOG_FILE).read_text()
    assert "RotaryEmbedding: Failed to load weights" in log and "Initializing a V1 LLM engine" in log


def test_optunas_alembic_plugins_say_nothing_on_the_console():
    """hydra/sweeper=optuna_grpo imports Optuna's storage, whose alembic logs 7 'setup plugin' lines at INFO."""
    code = ("import logging; logging.basicConfig(level=logging.INFO); "
            "from grpo_cli.observe.console import quiet_before_imports; quiet_before_imports(False); "
            "import optuna.storages")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=os.environ | {"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "alembic" not in out.stderr
