"""The GRPO loop. Read this file top to bottom to know the algorithm; each step calls a component
named for what it does, and each component decides itself when it is due.

    for each step:
        take B prompts -> sample G completions each (vLLM) -> score them (rewards)
        -> keep the groups worth training on (batch filter; may draw more prompts)
        -> group-normalised advantages -> mu passes of clipped-surrogate + KL updates (learner)
        -> push the new weights into vLLM (and, every K steps, into the reference) -> log
        -> watch the KL (warn, stop, or adapt beta) -> evaluate, checkpoint or stop when due
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from grpo_cli.algo.advantages import Advantages
from grpo_cli.algo.entropy import EntropyControl
from grpo_cli.algo.kl_watch import KLWatch
from grpo_cli.algo.reference import ReferenceRefresh
from grpo_cli.learner.learner import Learner, optimiser_steps
from grpo_cli.learner.models import check_model, load_tokenizer
from grpo_cli.observe.callbacks import Callbacks
from grpo_cli.observe.console import route_logs
from grpo_cli.observe.logger import NullLogger, RunHeader, RunLogger
from grpo_cli.observe.metrics import StepClock, step_metrics
from grpo_cli.parallel.dist import Dist
from grpo_cli.rewards import Rewards
from grpo_cli.rollout.engines import make_sampler
from grpo_cli.rollout.evaluate import Evaluator
from grpo_cli.rollout.prompts import PromptFormatter, PromptStream, prepare_splits
from grpo_cli.rollout.sampler import SamplerError
from grpo_cli.rollout.source import Draw, RolloutSource
from grpo_cli.state.checkpointer import Checkpointer, Resumed
from grpo_cli.state.stop import StopReason, StopSignals, stop_reason
from grpo_cli.tools.loop import make_generation
from grpo_cli.tools.registry import Toolbox, environment_reward


def run(cfg: DictConfig, run_dir: Path | None = None, overrides: list[str] | None = None) -> float | None:
    """Train (or only evaluate) as `cfg` says; returns the final eval accuracy, if any.

    `overrides`: the command line, so that a resumed run compares only the keys it names.
    SIGINT/SIGTERM end the run after the current step, with a checkpoint.
    """
    with StopSignals() as signals, contextlib.ExitStack() as cleanup:  # cleanup: e.g. stop a vLLM server
        return _run(cfg, Path(run_dir or HydraConfig.get().runtime.output_dir), overrides, signals, cleanup)


def _run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None, signals: StopSignals,
         cleanup: contextlib.ExitStack) -> float | None:
    # --- set-up -----------------------------------------------------------------------------------
    run_dir.mkdir(parents=True, exist_ok=True)
    # Under torchrun: this rank's share of every step's prompts, its own engine, the learner's
    # reductions; rank 0 alone logs and writes the model. Else a world of one.
    dist = Dist.join(cfg.train.dist_timeout_s, cfg.train.device, group_of_one=cfg.train.strategy == "fsdp2")
    resumed = Resumed.find(cfg, run_dir, overrides, dist)  # the newest checkpoint, when resuming
    cfg = resumed.config if resumed else cfg
    if dist.main:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    route_logs(cfg.logger, run_dir)  # library chatter -> run_dir/train.log

    check_model(cfg.model, cfg.sampler.max_model_len, cfg.sampler.max_tokens)
    tokenizer = load_tokenizer(cfg.model)
    toolbox = Toolbox.from_config(cfg.tools)  # tools the model may call while it generates (None: one turn)
    fmt = PromptFormatter(cfg.data, tokenizer, toolbox and toolbox.schemas)
    train_rows, eval_rows = prepare_splits(cfg.data, fmt, cfg.sampler.max_model_len, cfg.eval.max_rows)
    stream = PromptStream(train_rows, cfg.train.prompts_per_step, cfg.seed, cfg.data.shuffle)
    total_steps = cfg.train.max_steps or stream.steps_per_epoch * cfg.train.epochs
    rewards = Rewards.from_config(cfg.reward)
    if toolbox and toolbox.reward_name:  # an environment that owns a reward (its get_reward)
        rewards.add(toolbox.reward_name, environment_reward)
    header = RunHeader(cfg.model.path, cfg.data.path, len(train_rows), None if eval_rows is None else len(eval_rows),
                       0 if cfg.eval_only else total_steps, cfg.train.prompts_per_step, cfg.algo.group_size, cfg.run_name)
    logger = RunLogger(cfg.logger, run_dir, header, OmegaConf.to_container(cfg, resolve=True), rewards.accuracy,
                       wandb_id=resumed.state.wandb_id if resumed else None) if dist.main else NullLogger()
    # The colocated engine or a vLLM server, seeded `sampler.seed + rank`.
    sampler = cleanup.enter_context(make_sampler(cfg.sampler, cfg.model, run_dir, cfg.train.device, dist))
    # Prompts -> completions: one turn, or turns with tool calls between them (grpo_cli/tools/loop.py).
    generate = make_generation(cfg.tools, toolbox, sampler, fmt, tokenizer, cfg.sampler)
    evaluator = Evaluator(cfg.eval, eval_rows, fmt, generate, rewards, cfg.sampler.temperature, logger, dist, cfg.seed)
    if cfg.eval_only:
        return _evaluate_only(cfg.seed, evaluator, logger, cfg.model.path)

    optim_steps = total_steps * optimiser_steps(cfg.train.prompts_per_step * cfg.algo.group_size,
                                                cfg.train.optim_batch_size, cfg.algo.num_iterations)
    learner = Learner(cfg.model, cfg.algo, cfg.optim, cfg.train, cfg.sampler.temperature, cfg.seed, optim_steps, dist)
    advantage = Advantages.from_config(cfg.algo, rewards.weights)  # rewards -> advantages (group, batch, GDPO)
    kl_watch = KLWatch.from_config(cfg.algo)  # owns beta, the KL weight of each step
    entropy_control = EntropyControl.from_config(cfg.algo)  # owns entropy_coef (fixed, or adaptive)
    ref_refresh = ReferenceRefresh.from_learner(cfg.algo, learner)
    # Every rollout is seeded from (seed, step, global prompt index): the same samples on either
    # sampler, any rank count, after a resume, in any request order (sampler.reproducible).
    draw = Draw(stream, fmt, generate, rewards, instantiate(cfg.algo.batch_filter), cfg.algo.group_size, dist,
                cfg.seed)
    source = RolloutSource.from_config(cfg.algo, draw)  # drawn when due, or ahead (algo.max_staleness)
    cleanup.callback(source.close)
    callbacks = Callbacks.from_paths(cfg.train.callbacks)
    checkpointer = Checkpointer(cfg.checkpoint, run_dir, cfg, tokenizer, dist, callbacks, learner, source, logger,
                                evaluator, components={"kl_watch": kl_watch, "entropy_control": entropy_control,
                                                       "ref_refresh": ref_refresh, "rewards": rewards})
    # Seed (or restore) the global RNGs only now: building the vLLM engine reseeds them. Seeded
    # rollouts do not use them; user rewards, dropout and sampler.reproducible=false do.
    if resumed:
        checkpointer.restore(resumed)  # weights, optimiser, data position, rollouts drawn ahead, beta, RNGs
    else:
        set_seed(cfg.seed + dist.rank)  # python, numpy and torch RNGs
    start = resumed.state.step if resumed else 0
    learner.synchronize()  # a resume's host-to-device copies land before the weights are read
    sampler.load_weights(learner.weights(), version=start)  # the engine starts from exactly the learner's weights
    evaluator.before_training(resumed.state.first_eval if resumed else None)

    # --- the loop -----------------------------------------------------------------------------------
    for step in range(start + 1, total_steps + 1):
        clock = StepClock()
        # 1-2. B prompts x G completions, each scored; the batch filter picks the groups to train on.
        try:
            rollouts = source.next(step)
        except SamplerError as err:  # a vLLM server that died or hung while drawing
            checkpointer.stop(step - 1, StopReason(str(err)))
        sampler.sleep()  # with sampler.sleep_level > 0 the learner gets the engine's GPU memory
        callbacks("rollout", step)
        clock.lap("rollout")

        # 3. Advantages relative to the other completions of the same prompt: [n, G] -> [n*G].
        groups = rollouts.trained
        advantages = advantage(groups.scores, groups.group_size)

        # 4. The GRPO update: mu passes of shuffled micro-batches (none if no group is left).
        beta, entropy_coef = kl_watch.beta, entropy_control.coef
        learner_metrics = learner.update(groups.rollouts, advantages, beta, tokenizer.pad_token_id, entropy_coef)
        callbacks("learner", step)
        clock.lap("learner")

        # 5. The next rollouts come from the updated policy; every algo.ref_refresh_every steps
        #    the KL reference moves to it too.
        source.settle()  # rollouts drawn ahead finish on the weights they started with
        sync_failed = _push_weights(sampler, learner, step)
        clock.lap("sync")
        events = ref_refresh(step)

        # 6. Log; watch the KL; evaluate, checkpoint or stop when due.
        metrics = step_metrics(dist, rollouts, advantages, learner_metrics, clock, {
            "beta": beta, "entropy_coef": entropy_coef, "bad_steps": learner.bad_steps.total, "epoch": stream.epoch,
            **events})
        logger.log(step, metrics)
        trained = metrics["filter/groups_trained"] * groups.group_size  # completions, every rank's
        stop = kl_watch.update(step, learner_metrics.get("kl/mean"), trained)
        entropy_control.update(learner_metrics.get("entropy/mean"))
        logger.maybe_log_completions(step, groups, advantages)
        if not sync_failed:
            evaluator.maybe_run(step, total_steps)
        stop = dist.first_stop(stop or stop_reason(signals, learner.bad_steps, rewards) or sync_failed)
        checkpointer.after_step(step, stop)

    evaluator.final(total_steps)
    checkpointer.finish(total_steps)
    logger.close()
    evaluator.print_summary()
    return evaluator.last.get("eval/accuracy")


def _push_weights(sampler, learner: Learner, step: int) -> StopReason | None:
    """The learner's new weights into the sampler; a vLLM server that died is a reason to stop
    (this step is done, so it is still logged and saved)."""
    try:
        sampler.load_weights(learner.weights(), version=step)
    except SamplerError as err:
        return StopReason(str(err))
    return None


def _evaluate_only(seed: int, evaluator: Evaluator, logger, model_path: str) -> float | None:
    """`grpo-eval` (eval_only=true): the held-out evaluation of the model as it is."""
    set_seed(seed)
    final = evaluator.run(0)
    logger.close()
    logger.print_table(f"evaluation of {model_path}", final)
    return final.get("eval/accuracy")
