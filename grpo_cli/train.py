"""The GRPO loop. Read this file top to bottom to know the algorithm; each step calls a module
named for what it does.

    for each step:
        take B prompts -> sample G completions each (vLLM) -> score them (rewards)
        -> keep the groups worth training on (filters; may draw more prompts)
        -> group-normalised advantages -> mu passes of clipped-surrogate + KL updates (learner)
        -> push the new weights into vLLM (and, every K steps, into the reference) -> log
        -> watch the KL (warn, stop, or adapt beta)
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from grpo_cli.algo.advantages import group_advantages
from grpo_cli.algo.kl_watch import KLWatch
from grpo_cli.algo.reference import ReferenceRefresh
from grpo_cli.learner.learner import Learner, RolloutBatch
from grpo_cli.learner.models import check_model, load_tokenizer
from grpo_cli.observe.console import route_logs
from grpo_cli.observe.logger import NullLogger, RunLogger
from grpo_cli.parallel import dist as distributed
from grpo_cli.rewards import Rewards
from grpo_cli.rollout.evaluate import evaluate
from grpo_cli.rollout.filters import ScoredGroups
from grpo_cli.rollout.prompts import PromptFormatter, PromptStream, as_batch, load_splits
from grpo_cli.rollout.sampler import SamplerError, make_sampler
from grpo_cli.rollout.source import RolloutSource
from grpo_cli.state import checkpoint as run_state
from grpo_cli.state.stop import RunStopped, StopSignals, stop_reason


def run(cfg: DictConfig, run_dir: Path | None = None, overrides: list[str] | None = None) -> float | None:
    """Train (or only evaluate) as `cfg` says; returns the final eval accuracy, if any.

    `overrides`: the command line, so that a resumed run compares only the keys it names.
    SIGINT/SIGTERM end the run after the current step, with a checkpoint.
    """
    with StopSignals() as signals, contextlib.ExitStack() as cleanup:  # cleanup: e.g. stop a vLLM server
        return _run(cfg, Path(run_dir or HydraConfig.get().runtime.output_dir), overrides, signals, cleanup)


def _run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None, signals: StopSignals,
         cleanup: contextlib.ExitStack) -> float | None:
    run_dir.mkdir(parents=True, exist_ok=True)
    # Under torchrun (grpo_cli/parallel/dist.py): this rank's share of every step's prompts, its own
    # engine, the learner's reductions; rank 0 alone logs and writes the model. Else a world of one.
    me = distributed.init(cfg.train.dist_timeout_s, cfg.train.device, group_of_one=cfg.train.strategy == "fsdp2")
    # Resuming: the newest complete checkpoint's config and state; logs are cut back to it.
    checkpoint = run_state.find_resume(cfg.resume, run_dir)
    state = None
    if checkpoint is not None:
        cfg = run_state.resumed_config(cfg, checkpoint, overrides)
        state = run_state.load(checkpoint, me)  # this rank's RNGs and data position
        if me.main:
            run_state.cut_logs(run_dir, state.log_sizes)
    if me.main:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    route_logs(cfg.logger, run_dir)  # library chatter -> run_dir/train.log

    # --- set-up: data, rewards, the sampler and (unless only evaluating) the learner ----------
    check_model(cfg.model, cfg.sampler.max_model_len, cfg.sampler.max_tokens)
    tokenizer = load_tokenizer(cfg.model)
    fmt = PromptFormatter(cfg.data, tokenizer)
    train_rows, eval_rows = load_splits(cfg.data)
    fmt.check_columns(train_rows, "training")
    train_rows = fmt.fit(train_rows, "training", cfg.sampler.max_model_len)
    if eval_rows is not None:
        fmt.check_columns(eval_rows, "evaluation")
        eval_rows = fmt.fit(eval_rows, "evaluation", cfg.sampler.max_model_len)
        eval_rows = eval_rows.select(range(min(len(eval_rows), cfg.eval.max_rows or len(eval_rows))))
        eval_total = len(eval_rows)
        eval_rows = me.share(eval_rows)  # each rank evaluates its share; the metrics are joined
        eval_batch = as_batch(eval_rows, fmt)
        eval_ids = fmt.encode(eval_batch.prompts)
    rewards = Rewards.from_config(cfg.reward)
    accuracy_reward = cfg.reward.accuracy or rewards.names[0]
    G, B = cfg.algo.group_size, cfg.train.prompts_per_step

    def run_eval(step: int) -> dict[str, float]:
        if eval_rows is None:
            return {}
        metrics = evaluate(sampler, eval_batch, eval_ids, rewards, accuracy_reward, cfg.eval.pass_k,
                           cfg.sampler.temperature, cfg.eval.max_tokens) if len(eval_ids) else {}
        metrics = me.mean(metrics, len(eval_ids))  # every rank's, weighted by its rows
        logger.log(step, metrics)
        return metrics

    stream = PromptStream(train_rows, B, cfg.seed, cfg.data.shuffle)
    total_steps = cfg.train.max_steps or stream.steps_per_epoch * cfg.train.epochs
    logger = RunLogger(cfg, run_dir, total_steps, rows=(len(train_rows), None if eval_rows is None else eval_total),
                       wandb_id=state.wandb_id if state else None) if me.main else NullLogger()
    sampler = cleanup.enter_context(make_sampler(me.sampler_config(cfg.sampler), cfg.model, run_dir, cfg.train.device))  # colocated or a server; seeded sampler.seed + rank
    if cfg.eval_only:
        set_seed(cfg.seed)
        final = run_eval(0)
        logger.close()
        logger.print_table(f"evaluation of {cfg.model.path}", final)
        return final.get("eval/accuracy")

    opt_steps_per_step = cfg.algo.num_iterations * -(-B * G // (cfg.train.optim_batch_size or B * G))
    learner = Learner(cfg, total_optim_steps=total_steps * opt_steps_per_step, dist=me)
    batch_filter = instantiate(cfg.algo.batch_filter)

    def stop_for_kl(step: int) -> Path:  # the KL watch's `stop`: a checkpoint, then the logs closed
        saved = save(step, f"step_{step}")
        logger.close()
        return saved

    kl_watch = KLWatch.from_config(cfg.algo, learner.loss_fn, stop_for_kl)
    ref_refresh = ReferenceRefresh.from_learner(cfg.algo, learner)
    components = {"kl_watch": kl_watch, "ref_refresh": ref_refresh}  # state a checkpoint carries
    # Seed (or restore) every RNG only now: building the vLLM engine reseeds the global RNGs, and
    # the engine samples from torch's global generator.
    if state is not None:
        run_state.restore(state, checkpoint, learner, stream, components)  # weights, optimiser, data, RNGs
    else:
        set_seed(cfg.seed + me.rank)  # python, numpy and torch RNGs (each rank's engine samples from torch's)
    start = state.step if state else 0
    learner.synchronize()  # the loaded (or resumed) weights' host -> device copies are done before they are sent
    sampler.load_weights(learner.weights(), version=start)  # the engine starts from exactly the learner's weights
    first = state.first_eval if state else run_eval(0)

    def save(step: int, name: str) -> Path:
        # `source` holds the data position before every batch not trained on yet (algo.max_staleness).
        snapshot = run_state.capture(step, learner, source, logger, first, run_dir, components)
        return run_state.save(run_dir / "checkpoints" / name, snapshot, learner.checkpoint_model, tokenizer, cfg,
                              cfg.checkpoint.keep_last, cfg.checkpoint.merged, me,
                              weights=learner.checkpoint_weights())  # fsdp2: the gathered full weights

    def draw(timer: dict) -> ScoredGroups:
        """B prompts from the stream (this rank's B / N of them), G completions each from the current policy, scored."""
        t0 = time.perf_counter()
        batch = as_batch(me.share(stream.next()), fmt)
        rollouts = sampler.generate(fmt.encode(batch.prompts), n=G)
        t1 = time.perf_counter()
        group = batch.repeat(G)  # each prompt's row once per completion: [B*G]
        scores = rewards(group, rollouts)  # rewards are called as TRL calls them
        timer["sample"], timer["reward"] = timer["sample"] + t1 - t0, timer["reward"] + time.perf_counter() - t1
        timer["version"] = min(timer.get("version", rollouts.version), rollouts.version)  # the weights that sampled
        return ScoredGroups(group.prompts, group.columns, rollouts, scores, G)

    def sample_step() -> tuple:
        """One step's rollouts: the batch filter picks the groups to train on, drawing more if it must."""
        timer = {"sample": 0.0, "reward": 0.0}
        return *batch_filter(lambda: draw(timer)), timer

    # Drawn when a step needs them, or ahead while the learner trains (algo.max_staleness > 0).
    source = RolloutSource.from_config(cfg.algo, sample_step, stream)
    cleanup.callback(source.close)

    @contextlib.contextmanager
    def stop_if_sampler_fails(completed: int):
        """A vLLM server that died or hung while drawing: a checkpoint of the last completed step, one line, exit 1."""
        try:
            yield
        except SamplerError as err:
            source.halt()
            saved = save(completed, f"step_{completed}")
            logger.close()
            raise RunStopped(f"stopped after step {completed}: {err}; checkpoint {saved}; "
                             f"continue with: grpo-train resume={run_dir}") from None

    for step in range(start + 1, total_steps + 1):
        t0 = time.perf_counter()
        # 1-2. Sample B prompts x G completions and score every completion (each reward is kept
        #      for logging); the batch filter picks the groups to train on, drawing more if it must.
        with stop_if_sampler_fails(step - 1):
            drawn, groups, timer = source.next(step)
        sampler.sleep()  # with sampler.sleep_level > 0 the learner gets the engine's GPU memory
        run_state.pause_for_test("rollout", step)
        rollouts, scores, prompts = groups.rollouts, groups.scores, groups.prompts
        t_reward = time.perf_counter()

        # 3. Advantages relative to the other completions of the same prompt.
        adv = group_advantages(scores.total.view(len(groups), G), cfg.algo.adv_eps, cfg.algo.scale_rewards)
        advantages = adv.advantages.flatten()  # [n*G]

        # 4. The GRPO update: mu passes of shuffled micro-batches (none if no group is left).
        beta = learner.loss_fn.beta  # the KL weight of this step (the KL watch may adapt it)
        learner_metrics = {}
        if me.any(len(groups)):  # a rank with no group left still joins the step's collectives
            rollout_batch = RolloutBatch.build(rollouts.prompt_ids, rollouts.completion_ids, rollouts.logprobs,
                                               advantages, tokenizer.pad_token_id, rollouts.finish_reasons) if len(groups) else None
            learner_metrics = learner.train_step(rollout_batch)  # 0-dim tensors on the learner's device
        learner.synchronize()  # the device finishes the update before it is timed and its weights are sent
        run_state.pause_for_test("learner", step)
        t_learn = time.perf_counter()

        # 5. The next rollouts come from the updated policy; every algo.ref_refresh_every steps
        #    the KL reference moves to it too.
        sync_failed = None
        try:
            sampler.load_weights(learner.weights(), version=step)
        except SamplerError as err:  # a vLLM server that died: this step is done, so it is logged and saved, then the run stops
            sync_failed = (str(err), 1)
        t_sync = time.perf_counter()
        events = ref_refresh(step)

        # Rewards and rollouts: everything drawn this step; advantages: the groups trained on.
        # `me.cat` joins every rank's values (rank 0 logs the global numbers).
        everything = me.cat(drawn.scores.total)
        trained = me.cat(advantages)
        lengths = me.cat(torch.tensor([len(c) for c in drawn.rollouts.completion_ids], dtype=torch.float32))
        truncated = me.cat(torch.tensor([r == "length" for r in drawn.rollouts.finish_reasons], dtype=torch.float32))
        metrics = {
            "reward/mean": torch.nanmean(everything).item(),
            "reward/std": everything[~everything.isnan()].std().item() if everything.numel() > 1 else 0.0,
            **{f"reward/{k}/mean": torch.nanmean(me.cat(v)).item() for k, v in drawn.scores.per_reward.items()},
            **{f"reward/{k}/errors": int(me.max(torch.tensor(v))) for k, v in drawn.scores.errors.items()},
            "advantage/mean": trained.mean().item() if len(trained) else 0.0,
            "advantage/std": trained.std().item() if len(trained) else 0.0,
            "frac_zero_std": me.cat(drawn.zero_std.float()).mean().item(),
            "filter/groups_drawn": int(me.sum(torch.tensor(len(drawn)))),
            "filter/groups_trained": len(trained) // G,
            "completion_len/mean": lengths.mean().item(),
            "completion_len/max": lengths.max().item(),
            "truncated_frac": truncated.mean().item(),
            **learner_metrics,
            "beta": beta,
            "bad_steps": learner.bad_steps.total,  # optimiser steps skipped for NaN/Inf gradients, so far
            "time/sample_s": timer["sample"],
            "time/reward_s": timer["reward"],
            "time/learner_s": t_learn - t_reward,
            "time/sync_s": t_sync - t_learn,
            "time/step_s": t_sync - t0,
            "tokens_per_s": lengths.sum().item() / timer["sample"],  # every rank's tokens over this rank's time
            **timer["info"],  # rollout/version, rollout/staleness: the weights that sampled this step
            "epoch": stream.epoch,
            **events,
        }
        logger.log(step, metrics)
        # 6. KL watch (algo.kl_limit): warn, stop with a checkpoint, or adapt beta for the next step.
        kl_watch.update(step, learner_metrics.get("kl/mean"), len(trained))
        every = cfg.logger.completions_every
        if every and step % every == 0:
            logger.log_completions(step, [
                {"prompt": prompts[i], "completion": rollouts.texts[i], "reward": scores.total[i].item(),
                 "advantage": advantages[i].item(),
                 **{f"reward/{k}": v[i].item() for k, v in scores.per_reward.items()}}
                for i in range(min(cfg.logger.completions_rows, len(prompts)))
            ])
        if cfg.eval.every and step % cfg.eval.every == 0 and step < total_steps and not sync_failed:
            run_eval(step)
        stop = me.first_stop(stop_reason(signals, learner.bad_steps, rewards) or sync_failed)  # Ctrl-C, NaN steps, a failing reward, a dead server
        if stop or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
            saved = save(step, f"step_{step}")
        if stop:
            logger.close()
            raise RunStopped(f"stopped after step {step}: {stop[0]}; checkpoint {saved}; "
                             f"continue with: grpo-train resume={run_dir}", exit_code=stop[1])

    last = run_eval(total_steps)
    if cfg.checkpoint.final:
        save(total_steps, "final")
    logger.close()
    if last:
        logger.print_table("held-out evaluation", {f"before {k}": v for k, v in first.items()}
                           | {f"after {k}": v for k, v in last.items()})
    return last.get("eval/accuracy")
