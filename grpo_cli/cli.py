"""Console entry points: `grpo-train` (and `grpo-eval`, which is `grpo-train eval_only=true`)."""

from __future__ import annotations

import difflib
import os
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from grpo_cli.config.paths import config_dir
from grpo_cli.config.validate import exit_on_config_error, register_configs, unknown_key_message
from grpo_cli.errors import UserError
from grpo_cli.observe.console import is_verbose, quiet_before_imports
from grpo_cli.parallel.env import torchrun_place

register_configs()


def _task(cfg: DictConfig) -> float | None:
    # Single runs were validated by a callback before Hydra made the run dir; sweeps are
    # validated here, per job.
    exit_on_config_error(cfg)
    quiet_before_imports(is_verbose(cfg.logger))  # env switches torch and vLLM read at import
    # Heavy imports (torch, vllm) only once the config is good and those switches are set.
    from grpo_cli.parallel import dist, launch
    from grpo_cli.state.checkpoint import find_resume, read_manifest, resumed_config
    from grpo_cli.state.stop import RunStopped

    run_dir = HydraConfig.get().runtime.output_dir
    overrides = list(HydraConfig.get().overrides.task)
    try:
        checkpoint = find_resume(cfg.resume, Path(run_dir))
        if checkpoint is not None and dist.from_env().world == 1:  # what this command changes: checked once, before any rank starts
            resumed_config(cfg, checkpoint, overrides)
        saved = None if checkpoint is None else (read_manifest(checkpoint) or {}).get("world_size", 1)
    except UserError as err:
        print(f"grpo-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    nproc = launch.ranks_to_launch(cfg.train.nproc, saved)
    if nproc > 1:  # train.nproc=N (or a resumed N-rank run): N ranks of this same command, all in this run dir
        sys.exit(launch.launch(nproc, run_dir, sys.argv[1:]))
    from grpo_cli.rollout.colocated import shut_down_engines
    from grpo_cli.train import run

    try:
        return run(cfg, overrides=overrides)
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


_run = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(_task)


def _one_line(err: Exception) -> str:
    """What Hydra reports in 4-25 lines (a wrong option, a key not in the config), as one line."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options is not None:
        group, _, name = err.missing_cfg_file.rpartition("/")
        close = difflib.get_close_matches(name, err.options, n=1)
        near = f"did you mean {group}={close[0]}? " if close else ""
        return f"{group}={name}: no such option; {near}{group} options: {', '.join(err.options)}"
    cause = err.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):  # `train.max_step=2`: as `+train.max_step=2` says it
        return unknown_key_message(cause.full_key)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    hint = [line.split(" use +", 1)[1] for line in lines[1:] if " use +" in line]
    if hint and "defaults list" in lines[0]:  # `recipe=demo`: "To append to your default list use +recipe=demo"
        group, _, name = hint[0].partition("=")
        options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        return (f"{group}={name}: {group} is not in the default config, add it with +{group}={name}"
                + (f" ({group} options: {', '.join(options)})" if options else ""))
    if cause is not None and str(cause).strip():
        lines.append(str(cause).strip().splitlines()[0])
    return ": ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else (lines or [type(err).__name__])[0]


def _help(argv: list[str]) -> None:
    """After Hydra's header and groups: every option with its value for this command and its meaning."""
    from grpo_cli.config.describe import describe
    from grpo_cli.config.validate import compose
    from grpo_cli.state.checkpoint import RESUMABLE

    overrides = [a for a in argv if not a.startswith("-") and not a.startswith("hydra")]
    try:
        cfg = compose(overrides) if "--config-dir" not in argv else None
    except Exception:  # a bad override: the schema's defaults still explain every key
        cfg = None
    print("== Options ==")
    print("Override any of them (key=value); values shown are what this command would run.\n")
    print("\n".join(describe(cfg)))
    print(f"\nA resumed run (resume=RUN_DIR) may change only: {', '.join(RESUMABLE[1:])}.\n")
    print(OmegaConf.load(config_dir() / "config.yaml").hydra.help.footer.rstrip())


def _main(argv: list[str]) -> None:
    """Run Hydra; a mistake it catches before our code runs becomes one `grpo-train: error:` line."""
    if "--help" in argv or "-h" in argv:
        try:
            _run()  # Hydra's header and config groups (conf/config.yaml's help template); it exits
        except SystemExit as done:
            if done.code:
                raise
        _help(argv)
        return
    if any(a.replace(" ", "") == "hydra/launcher=slurm" for a in argv) and shutil.which("srun") is None:
        print("grpo-train: error: hydra/launcher=slurm: not on a SLURM cluster: srun not found", file=sys.stderr)
        sys.exit(2)
    if os.environ.get("HYDRA_FULL_ERROR"):  # the user asked for Hydra's full report
        return _run()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what it would print in many lines; we print one
    try:
        _run()
    except (HydraException, OmegaConfBaseException) as err:
        if any(frame.f_code is _task.__code__ for frame, _ in traceback.walk_tb(err.__traceback__)):
            raise  # an error of the run itself, not of the command line
        print(f"grpo-train: error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)


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
    _main(sys.argv[1:])


def eval_main() -> None:
    sys.argv.insert(1, "eval_only=true")
    _quiet_early(sys.argv[1:])
    _main(sys.argv[1:])
