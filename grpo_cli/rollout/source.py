"""Where each step's rollouts come from: drawn now, or ahead of time while the learner trains.

`algo.max_staleness` = 0 (the default) is the on-policy loop: a step draws its rollouts from the
weights of the previous step, then trains. With k > 0 (a vLLM server sampler only: the colocated
engine shares the learner's device and process, so nothing would overlap) a background thread
draws the next k steps' rollouts (HTTP calls to the server, then rewards) while the learner
trains. A rollout sampled with the weights of step v is used at step s only if
s - 1 - v <= k, else it is discarded and drawn again. The learner then takes pi_old from the
sampler's log-probs (the policy that really sampled), or, with an importance-sampling correction
(`algo.is_correction`), keeps its own log-probs as pi_old and lets the correction weigh
pi_old / pi_sampler, which then covers the staleness as well as the sampler/learner mismatch.

Every rollout is drawn with a per-request seed, a function of (run seed, step, global prompt
index) (`rollout_seed`), and a batch drawn ahead for step t always samples from the weights of step
max(0, t - 1 - k): the loop calls `settle()` before it pushes new weights, so every batch drawn
ahead has finished with the weights it started on. Which weights sampled a batch, and with which
random numbers, is then a function of its step, never of thread timing.

Checkpoints keep the batches drawn ahead: a checkpoint holds their rollouts (drawn, scored, not yet
trained on) and the data position after them, so a resumed run trains on exactly what the
uninterrupted one did. A batch that failed, or was cut short by a stop, is not kept: the data
position goes back to before it, and after a resume its prompts are drawn again (same seeds, but
from the resumed weights).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from grpo_cli.rollout.filters import ScoredGroups
from grpo_cli.rollout.prompts import as_batch
from grpo_cli.rollout.sampler import rollout_seed


@dataclass
class StepRollouts:
    """One step's rollouts, scored and filtered: what the source hands the loop."""

    drawn: ScoredGroups  # every group drawn for the step (logged)
    trained: ScoredGroups  # the groups the batch filter keeps for the learner
    sample_s: float = 0.0  # seconds in the sampler
    reward_s: float = 0.0  # seconds in the reward functions
    info: dict[str, float] = field(default_factory=dict)  # rollout/version, staleness, discarded, wait

    @property
    def version(self) -> int:
        """The learner step whose weights sampled them (the oldest, when the filter drew again)."""
        return self.drawn.rollouts.version


# produce(step): one step's rollouts, drawn from the sampler's current weights.
Produce = Callable[[int], StepRollouts]


class Draw:
    """Produces one step's rollouts: this rank's B / N prompts from the stream, G completions each
    from the sampler's current weights, scored; the batch filter picks the groups to train on,
    drawing more if it must. Prompt i of the step's draws (every rank's share and every re-draw
    counted) is sampled with seed `rollout_seed(seed, step, i)`."""

    def __init__(self, stream, fmt, generate, rewards, batch_filter, group_size: int, dist, seed: int):
        """`generate`: a Generation (grpo_cli/rollout/generation.py), one turn or turns with tools."""
        self.stream, self.fmt, self.generate, self.rewards = stream, fmt, generate, rewards
        self.batch_filter, self.group_size, self.dist, self.seed = batch_filter, group_size, dist, seed
        self.sample_s = self.reward_s = 0.0
        self.step, self.drawn = 0, 0  # the step being drawn, and how many prompts (all ranks') it drew so far

    def __call__(self, step: int) -> StepRollouts:
        self.sample_s = self.reward_s = 0.0
        self.step, self.drawn = step, 0
        drawn, trained = self.batch_filter(self.groups)
        return StepRollouts(drawn, trained, self.sample_s, self.reward_s)

    def groups(self) -> ScoredGroups:
        """B more prompts (this rank's share), G completions each, scored as TRL scores them."""
        t0 = time.perf_counter()
        rows = self.stream.next()  # [B], every rank's
        share = self.dist.share_range(len(rows))
        batch = as_batch(rows.select(share), self.fmt, [self.drawn + i for i in share])
        self.drawn += len(rows)
        seeds = [rollout_seed(self.seed, self.step, i) for i in batch.index]
        rollouts = self.generate(batch, self.group_size, seeds)
        t1 = time.perf_counter()
        group = batch.repeat(self.group_size)  # each prompt's row once per completion: [B*G]
        scores = self.rewards(group, rollouts)
        rollouts.environments = None  # live objects, done with once scored: never kept or checkpointed
        self.sample_s, self.reward_s = self.sample_s + t1 - t0, self.reward_s + time.perf_counter() - t1
        return ScoredGroups(group.prompts, group.columns, rollouts, scores, self.group_size)


class _Batch:
    """One step's rollouts on their way: the step they are for, the data position before them, and
    the future result."""

    def __init__(self, step: int):
        self.step = step
        self.before: dict | None = None
        self.started = threading.Event()
        self.future: Future | None = None

    @property
    def ready(self) -> bool:
        """Drawn and scored without an error."""
        f = self.future
        return f is not None and f.done() and not f.cancelled() and f.exception() is None


class RolloutSource:
    def __init__(self, produce: Produce, stream, max_staleness: int = 0):
        self.produce, self.stream, self.max_staleness = produce, stream, max_staleness
        self.pending: deque[_Batch] = deque()  # drawn or being drawn ahead, oldest first
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rollouts") if max_staleness else None

    @classmethod
    def from_config(cls, algo_cfg, draw: Draw) -> RolloutSource:
        return cls(draw, draw.stream, algo_cfg.max_staleness)

    def next(self, step: int) -> StepRollouts:
        """The rollouts for `step`; their `info` logs the weight version and staleness."""
        t0, discarded = time.perf_counter(), 0
        while True:
            if not self.pending:
                self._start(step)
            batch = self.pending.popleft()
            try:
                rollouts = batch.future.result()
            except BaseException:
                self.pending.appendleft(batch)
                self.halt()  # the data position goes back to before this batch
                raise
            staleness = step - 1 - rollouts.version
            if staleness <= self.max_staleness:
                break
            discarded += 1  # sampled with weights more than max_staleness steps old: draw again
        while self.pool is not None and len(self.pending) < self.max_staleness:
            self._start(step + len(self.pending) + 1)  # the next steps' rollouts, drawn while the learner trains
        rollouts.info = {"rollout/version": rollouts.version, "rollout/staleness": staleness,
                         "rollout/discarded": discarded, "time/rollout_wait_s": time.perf_counter() - t0}
        return rollouts

    def settle(self) -> None:
        """Wait until every batch drawn ahead has finished (errors surface in `next`); the loop calls
        it before pushing new weights, so a batch drawn ahead never mixes two weight versions."""
        wait([b.future for b in self.pending])

    def _start(self, step: int) -> None:
        batch = _Batch(step)
        if self.pool is not None:
            batch.future = self.pool.submit(self._draw, batch)
        else:  # on-policy: draw now, in this thread
            batch.future = Future()
            try:
                batch.future.set_result(self._draw(batch))
            except BaseException as err:
                batch.future.set_exception(err)
        self.pending.append(batch)

    def _draw(self, batch: _Batch) -> StepRollouts:
        batch.before = self.stream.state_dict()
        batch.started.set()
        return self.produce(batch.step)

    def halt(self) -> None:
        """Stop drawing ahead. Batches drawn and scored are kept (a checkpoint saves them); from the
        first one that failed or was cut short on, they are dropped and the data position goes back
        to before it."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)  # HTTP timeouts bound the wait
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="rollouts")
        self._drop_unfinished()

    def _drop_unfinished(self) -> None:
        kept = 0
        while kept < len(self.pending) and self.pending[kept].ready:
            kept += 1
        dropped = list(self.pending)[kept:]
        if dropped and dropped[0].started.is_set():  # one thread, oldest first: none later started
            self.stream.load_state_dict(dropped[0].before)
        self.pending = deque(list(self.pending)[:kept])

    def state_dict(self) -> dict:
        """What a checkpoint records: the batches drawn ahead (their rollouts) and the data position
        after them; or, from one that failed, the position before it (its prompts are drawn again)."""
        self.settle()
        self._drop_unfinished()
        return {**self.stream.state_dict(), "ahead": [(b.step, b.before, b.future.result()) for b in self.pending]}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
        self.pending.clear()
        for step, before, rollouts in state.get("ahead", []):
            batch = _Batch(step)
            batch.before, batch.future = before, Future()
            batch.started.set()
            batch.future.set_result(rollouts)
            self.pending.append(batch)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
