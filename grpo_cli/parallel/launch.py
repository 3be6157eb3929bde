"""Launching ranks: `grpo-train train.nproc=N` starts N ranks of the same command (torch's elastic
launcher, what torchrun runs), and plain torchrun gets every rank into one run dir."""

from __future__ import annotations

import os
import sys
from datetime import datetime

import torch
import torch.distributed as dist

from grpo_cli.parallel.dist import from_env, init


def pin_run_dir(argv: list[str], timeout_s: float) -> list[str]:
    """Under plain torchrun every rank must write into one run dir, but Hydra's `${now:}` is each
    rank's own clock: rank 0's clock becomes `hydra.run.dir` (the default pattern
    outputs/DATE/TIME) for every rank, unless the command names a dir already."""
    place = from_env()
    if place.world == 1 or any(a.startswith(("hydra.run.dir=", "resume=")) and not a.endswith(("=auto", "=null"))
                            for a in argv):
        return argv
    init(timeout_s)
    now = place.broadcast(datetime.now()) if dist.is_initialized() else datetime.now()
    return argv + [f"hydra.run.dir=outputs/{now:%Y-%m-%d}/{now:%H-%M-%S}"]


def ranks_to_launch(nproc: int, saved_world: int | None) -> int:
    """How many ranks `grpo-train` must start: none inside a torchrun rank; for a resumed run the
    checkpoint's number (`saved_world`, unless train.nproc names one); else train.nproc."""
    if from_env().world > 1:
        return 1
    if saved_world is not None and nproc == 1:
        return saved_world
    return nproc


def launch(nproc: int, run_dir: str, argv: list[str]) -> int:
    """`grpo-train train.nproc=N ...`: start N ranks of `python -m grpo_cli ARGV` with torch's
    elastic launcher (what torchrun runs), all writing into `run_dir`. Returns the exit code."""
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.5)
    if not torch.cuda.is_available():  # N ranks share this host's cores (torchrun sets 1 per rank)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = ["-m", "grpo_cli", *[a for a in argv if not a.startswith("hydra.run.dir=")], f"hydra.run.dir={run_dir}"]
    try:
        elastic_launch(config, sys.executable)(*args)
    except SignalException as err:  # Ctrl-C / SIGTERM: the agent passed it on; each rank finished its step and saved
        print(f"grpo-train: stopped by signal {int(err.sigval)}; the ranks wrote a checkpoint if they finished their "
              f"step within torchrun's grace period; continue with: grpo-train resume={run_dir}", file=sys.stderr)
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        print(f"grpo-train: error: rank {rank} of {nproc} exited with code {failure.exitcode}; the other "
              f"ranks were stopped (their output above, engine logs in {run_dir}/train.log)", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0
