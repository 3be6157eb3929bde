"""Console entry points: `grpo-train` (and `grpo-eval`, which is `grpo-train eval_only=true`)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from grpo_cli.config.paths import config_dir
from grpo_cli.config.validate import exit_on_config_error, register_configs
from grpo_cli.errors import UserError
from grpo_cli.observe.console import is_verbose, quiet_before_imports
from grpo_cli.parallel.env import torchrun_place

register_configs()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _run(cfg: DictConfig) -> float | None:
    # Single runs were validated by a callback before Hydra made the run dir; sweeps are
    # validated here, per job.
    exit_on_config_error(cfg)
    quiet_before_imports(is_verbose(cfg.logger))  # env switches torch and vLLM read at import
    # Heavy imports (torch, vllm) only once the config is good and those switches are set.
    from grpo_cli.parallel import dist, launch
    from grpo_cli.state.checkpoint import saved_world
    from grpo_cli.state.stop import RunStopped

    run_dir = HydraConfig.get().runtime.output_dir
    nproc = launch.ranks_to_launch(cfg.train.nproc, saved_world(cfg.resume, run_dir))
    if nproc > 1:  # train.nproc=N (or a resumed N-rank run): N ranks of this same command, all in this run dir
        sys.exit(launch.launch(nproc, run_dir, sys.argv[1:]))
    from grpo_cli.rollout.colocated import shut_down_engines
    from grpo_cli.train import run

    try:
        return run(cfg, overrides=list(HydraConfig.get().overrides.task))
    except RunStopped as err:  # Ctrl-C, SIGTERM, a fault: a checkpoint was written; say how to go on
        print(f"grpo-train: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except UserError as err:  # the user's data, reward or model: one line, no traceback
        print(f"grpo-train: error: {err}", file=sys.stderr)
        sys.exit(1)
    finally:
        if dist.initialized():  # under torchrun: the engines, then the process group
            shut_down_engines()
            dist.destroy()


def _resume_in_place(argv: list[str]) -> list[str]:
    """`resume=DIR` continues in DIR: Hydra picks the run dir before our code runs, so tell it here."""
    dirs = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if dirs and dirs[-1] not in ("auto", "null") and not any(a.startswith("hydra.run.dir=") for a in argv):
        return argv + [f"hydra.run.dir={dirs[-1]}"]
    return argv


def _quiet_early(argv: list[str]) -> None:
    """Torch reads its C++ log level once, when imported, and config validation (before `_run`)
    imports torch for `_target_`s; so the quiet switches are set from the command line first."""
    verbose = any(a.lower() == "logger.verbose=true" or a.startswith("hydra.verbose") for a in argv)
    quiet_before_imports(verbose)


def _one_run_dir(argv: list[str]) -> list[str]:
    """Under plain torchrun, every rank into one run dir (grpo_cli/parallel/launch.py pins it)."""
    if torchrun_place()[1] == 1:
        return argv
    from grpo_cli.config.schema import TrainConfig
    from grpo_cli.parallel.launch import pin_run_dir

    timeout = [a.split("=", 1)[1] for a in argv if a.startswith("train.dist_timeout_s=")]
    return pin_run_dir(argv, float(timeout[-1]) if timeout else TrainConfig.dist_timeout_s)


def train_main() -> None:
    sys.argv[1:] = _resume_in_place(sys.argv[1:])
    _quiet_early(sys.argv[1:])
    sys.argv[1:] = _one_run_dir(sys.argv[1:])
    _run()


def eval_main() -> None:
    sys.argv.insert(1, "eval_only=true")
    _quiet_early(sys.argv[1:])
    _run()
