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

Checkpoints never lose rollouts silently: a checkpoint records the data position before every
batch that has not been trained on yet, so after a resume those prompts are drawn again (from the
resumed weights); the rollouts that were in flight are dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from grpo_cli.rollout.filters import ScoredGroups
from grpo_cli.rollout.prompts import as_batch


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


# produce(): one step's rollouts, drawn from the sampler's current weights.
Produce = Callable[[], StepRollouts]


class Draw:
    """Produces one step's rollouts: this rank's B / N prompts from the stream, G completions each
    from the sampler's current weights, scored; the batch filter picks the groups to train on,
    drawing more if it must."""

    def __init__(self, stream, fmt, sampler, rewards, batch_filter, group_size: int, dist):
        self.stream, self.fmt, self.sampler, self.rewards = stream, fmt, sampler, rewards
        self.batch_filter, self.group_size, self.dist = batch_filter, group_size, dist
        self.sample_s = self.reward_s = 0.0

    def __call__(self) -> StepRollouts:
        self.sample_s = self.reward_s = 0.0
        drawn, trained = self.batch_filter(self.groups)
        return StepRollouts(drawn, trained, self.sample_s, self.reward_s)

    def groups(self) -> ScoredGroups:
        """B more prompts (this rank's share), G completions each, scored as TRL scores them."""
        t0 = time.perf_counter()
        batch = as_batch(self.dist.share(self.stream.next()), self.fmt)
        rollouts = self.sampler.generate(self.fmt.encode(batch.prompts), n=self.group_size)
        t1 = time.perf_counter()
        group = batch.repeat(self.group_size)  # each prompt's row once per completion: [B*G]
        scores = self.rewards(group, rollouts)
        self.sample_s, self.reward_s = self.sample_s + t1 - t0, self.reward_s + time.perf_counter() - t1
        return ScoredGroups(group.prompts, group.columns, rollouts, scores, self.group_size)


class _Batch:
    """One step's rollouts on their way: the data position before them, and the future result."""

    def __init__(self):
        self.before: dict | None = None
        self.started = threading.Event()
        self.future: Future | None = None


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
                self._start()
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
            self._start()  # the next steps' rollouts, drawn while the learner trains on these
        rollouts.info = {"rollout/version": rollouts.version, "rollout/staleness": staleness,
                         "rollout/discarded": discarded, "time/rollout_wait_s": time.perf_counter() - t0}
        return rollouts

    def _start(self) -> None:
        batch = _Batch()
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
        return self.produce()

    def halt(self) -> None:
        """Stop drawing ahead and put the data position back to before the oldest batch not yet
        trained on (its rollouts are dropped): what a checkpoint taken now must record."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)  # HTTP timeouts bound the wait
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="rollouts")
        if self.pending and self.pending[0].started.is_set():  # one thread, oldest first: none later started
            self.stream.load_state_dict(self.pending[0].before)
        self.pending.clear()

    def state_dict(self) -> dict:
        """The data position a checkpoint records: before every batch not yet trained on."""
        if not self.pending:
            return self.stream.state_dict()
        first = self.pending[0]  # the oldest runs first: it has started, or is about to
        while not first.started.wait(0.1) and not first.future.done():
            pass
        return dict(first.before) if first.started.is_set() else self.stream.state_dict()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
