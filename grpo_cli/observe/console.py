"""What the console shows, and where engine and library chatter goes instead.

By default the console carries only what a person watches: the run header, the progress bar,
evaluations, our own warnings, errors, and the final table (all printed by grpo_cli.observe.logger).
Everything vLLM, transformers, datasets, torch and W&B log is routed through Python logging into
the run dir's log file (`<run_dir>/train.log`, which is Hydra's job log when Hydra made the run
dir). `logger.verbose=true` (or Hydra's `hydra.verbose`) lets it all through to the console too.

Two things are silenced on the way that are not chatter worth a line even in the log file:
progress bars of loading and writing tiny files, and W&B's own terminal output (the header prints
the W&B mode and URL instead).

One vLLM warning deserves a word because it reads like a broken weight sync: every
`sampler.load_weights` logs `RotaryEmbedding: Failed to load weights` (vllm/model_executor/
model_loader/reload/layerwise.py, `finalize_layerwise_processing`). The layer's only tensor is
`cos_sin_cache`, a buffer vLLM computes from the model config (rope theta, max positions); it is
not learned and no checkpoint or state dict holds it, yet the in-place reload counts buffers as
loadable. Nothing arrives for it, so vLLM puts the layer's existing cache back and warns. The
rotary cache is unchanged by training, so the warning is harmless: it stays in the log file. (The
sync itself is checked in tests/test_engine.py: log-probs of engine and learner agree to 1e-4.)
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console

console = Console(stderr=True)  # what a person watches: the header, the bar, evaluations, warnings
LOG_FILE = "train.log"
# Libraries that install their own console handler (and do not propagate to the root logger).
_LIBRARIES = ("vllm", "transformers", "datasets", "huggingface_hub")
_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job-log format

# Set before torch / vLLM are imported (grpo_cli.cli calls `quiet_before_imports`).
#  - VLLM_CONFIGURE_LOGGING=0: vLLM does not attach its own stdout handler; its records propagate
#    to the root logger like any library's, so they reach the log file (and the console only
#    when verbose).
#  - TORCH_CPP_LOG_LEVEL=ERROR: torch's C++ warnings (e.g. vLLM-CPU's "NUMA binding: Using MEMBIND
#    policy ...") are printed by C++ straight to stderr; Python logging cannot route them.
QUIET_ENV = {"VLLM_CONFIGURE_LOGGING": "0", "TORCH_CPP_LOG_LEVEL": "ERROR", "WANDB_SILENT": "true"}


def is_verbose(cfg: DictConfig) -> bool:
    """`logger.verbose=true`, or Hydra's `hydra.verbose` set to anything."""
    from hydra.core.hydra_config import HydraConfig

    return bool(cfg.verbose) or (HydraConfig.initialized() and bool(HydraConfig.get().verbose))


def quiet_before_imports(verbose: bool) -> None:
    """Environment switches that only work before the libraries start; the user's own env wins."""
    env = dict(QUIET_ENV)
    if verbose:
        env.pop("TORCH_CPP_LOG_LEVEL")
        env.pop("WANDB_SILENT")
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if not verbose:  # Optuna's storage imports alembic, which logs a line per plugin at INFO
        logging.getLogger("alembic").setLevel(logging.WARNING)


class _ConsoleFilter(logging.Filter):
    """Errors from anyone; warnings only from grpo_cli itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        return record.levelno >= logging.WARNING and record.name.split(".")[0] == "grpo_cli"


_FILTER = _ConsoleFilter()
_own_file_handler: logging.Handler | None = None  # the log file this module opened (runs without Hydra)


def _is_console(handler: logging.Handler) -> bool:
    """A handler writing to the terminal (not a file, not a test's capture buffer)."""
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in streams


def route_logs(cfg: DictConfig, run_dir: Path) -> Path:
    """Send every library's log records to the run's log file, and (unless `cfg` (the `logger`
    section) is verbose) keep them off the console. Returns the log file's path. Safe to call once
    per run in one process."""
    global _own_file_handler
    verbose = is_verbose(cfg)
    quiet_before_imports(verbose)
    root = logging.getLogger()
    if _own_file_handler is not None:  # a previous run in this process (tests, sweeps)
        root.removeHandler(_own_file_handler)
        _own_file_handler.close()
        _own_file_handler = None
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)
             and Path(h.baseFilename).parent == run_dir.resolve()]
    if files:  # Hydra's job log
        log_file = Path(files[0].baseFilename)
    else:
        log_file = run_dir / LOG_FILE
        _own_file_handler = logging.FileHandler(log_file)
        _own_file_handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(_own_file_handler)
    root.setLevel(min(root.getEffectiveLevel(), logging.INFO))

    for name in _LIBRARIES:
        lib = logging.getLogger(name)
        for handler in [h for h in lib.handlers if type(h) is logging.StreamHandler]:
            lib.removeHandler(handler)  # e.g. vLLM's stdout handler when vllm was imported earlier
        lib.propagate = True
    logging.captureWarnings(True)  # Python warnings (FutureWarning, ...) go to the log file too

    for handler in root.handlers:
        if _is_console(handler):
            if verbose:
                handler.removeFilter(_FILTER)
            else:
                handler.addFilter(_FILTER)
    _progress_bars(enabled=verbose)
    return log_file


def _progress_bars(enabled: bool) -> None:
    import datasets
    import huggingface_hub.utils
    import transformers

    if enabled:
        datasets.enable_progress_bars()
        huggingface_hub.utils.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
    else:
        datasets.disable_progress_bars()
        huggingface_hub.utils.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
