"""Console entry points: `grpo-train` (and `grpo-eval`, which is `grpo-train eval_only=true`)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from grpo_cli.config import exit_on_config_error, register_configs
from grpo_cli.console import is_verbose, quiet_before_imports
from grpo_cli.errors import UserError
from grpo_cli.paths import config_dir

register_configs()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _run(cfg: DictConfig) -> float | None:
    # Single runs were validated by a callback before Hydra made the run dir; sweeps are
    # validated here, per job.
    exit_on_config_error(cfg)
    quiet_before_imports(is_verbose(cfg.logger))  # env switches torch and vLLM read at import
    from grpo_cli.train import run  # heavy imports (torch, vllm) only once the config is good

    try:
        return run(cfg)
    except UserError as err:  # the user's data, reward or model: one line, no traceback
        print(f"grpo-train: error: {err}", file=sys.stderr)
        sys.exit(1)


def train_main() -> None:
    _run()


def eval_main() -> None:
    sys.argv.insert(1, "eval_only=true")
    _run()
