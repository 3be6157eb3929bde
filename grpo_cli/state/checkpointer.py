"""The run's checkpoints as the loop sees them: when one is due, the final one, and the one way a
run stops early.

Every reason to stop (a signal, NaN/Inf steps, a failing reward, a dead sampler, the KL limit) is a
`StopReason`; `Checkpointer.stop` writes the checkpoint of the last completed step, closes the logs
and raises `RunStopped` with the line that says how to resume. Nothing else in a run stops it
early with a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig

from grpo_cli.observe.console import console
from grpo_cli.state import checkpoint
from grpo_cli.state.stop import RunStopped, StopReason


@dataclass
class Resumed:
    """A run that continues from a checkpoint: its config, its state and where it was read."""

    directory: Path
    config: DictConfig
    state: checkpoint.RunState

    @classmethod
    def find(cls, cfg: DictConfig, run_dir: Path, overrides: list[str] | None, dist) -> Resumed | None:
        """The newest complete checkpoint `cfg.resume` points at (None: a fresh run). The logs are
        cut back to it, so every step appears once."""
        directory = checkpoint.find_resume(cfg.resume, run_dir)
        if directory is None:
            return None
        config = checkpoint.resumed_config(cfg, directory, overrides)
        state = checkpoint.load(directory, dist)  # this rank's RNGs and data position
        if dist.main:
            checkpoint.cut_logs(run_dir, state.log_sizes)
            console.print(f"resuming from step {state.step} (checkpoint {directory})", highlight=False, soft_wrap=True)
        return cls(directory, config, state)


class Checkpointer:
    """Writes `RUN_DIR/checkpoints/step_N` every `checkpoint.every` steps, `final` at the end, and
    the checkpoint of the last completed step when the run stops early.

    `parts`: what a checkpoint captures: the learner, the rollout source (the batches drawn ahead, not
    trained on yet, and the data position after them), the logger (W&B id, log sizes), the evaluator (the first
    evaluation) and the loop's other stateful components by name (KL watch, reference refresh, the rewards' failure counters) (`state_dict` / `load_state_dict`).
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, run_config: DictConfig, tokenizer, dist, callbacks,
                 learner, source, logger, evaluator, components: dict):
        self.cfg, self.run_dir, self.run_config, self.tokenizer = cfg, run_dir, run_config, tokenizer
        self.dist, self.callbacks = dist, callbacks
        self.learner, self.source, self.logger, self.evaluator = learner, source, logger, evaluator
        self.components = components

    def restore(self, resumed: Resumed) -> None:
        """Weights, optimiser, data position (and rollouts drawn ahead), components and RNGs as the
        checkpoint left them."""
        checkpoint.restore(resumed.state, resumed.directory, self.learner, self.source, self.components)

    def save(self, step: int, name: str | None = None) -> Path:
        snapshot = checkpoint.capture(step, self.learner, self.source, self.logger, self.evaluator.first,
                                      self.run_dir, self.components)
        return checkpoint.save(self.run_dir / "checkpoints" / (name or f"step_{step}"), snapshot,
                               self.learner.checkpoint_model, self.tokenizer, self.run_config, self.cfg.keep_last,
                               self.cfg.merged, self.dist, weights=self.learner.checkpoint_weights(),
                               on_exported=lambda s: self.callbacks("checkpoint", s))

    def after_step(self, step: int, stop: StopReason | None) -> None:
        """Stop (with a checkpoint) when there is a reason to, else save when `checkpoint.every` is due."""
        if stop is not None:
            self.stop(step, stop)
        if self.cfg.every and step % self.cfg.every == 0:
            self.save(step)

    def stop(self, step: int, reason: StopReason) -> NoReturn:
        """The one stop path: the checkpoint of `step` (the last completed one), the logs closed,
        then `RunStopped` with the line that says why and how to continue."""
        self.source.halt()  # drawing ahead stops; batches not finished are dropped, their prompts drawn again
        saved = self.save(step)
        self.logger.close()
        raise RunStopped(f"stopped after step {step}: {reason.message}; checkpoint {saved}; "
                         f"continue with: grpo-train resume={self.run_dir}", exit_code=reason.exit_code)

    def finish(self, total_steps: int) -> None:
        if self.cfg.final:
            self.save(total_steps, "final")

