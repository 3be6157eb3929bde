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

# produce(): one step's (drawn, groups, stats), stats holding "sample", "reward" seconds and the
# weight "version" its rollouts were sampled with (the oldest, if the filter drew more than once).
Produce = Callable[[], tuple]


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
    def from_config(cls, algo_cfg, produce: Produce, stream) -> RolloutSource:
        return cls(produce, stream, algo_cfg.max_staleness)

    def next(self, step: int) -> tuple:
        """(drawn, groups, stats) for `step`; stats["info"] logs the weight version and staleness."""
        t0, discarded = time.perf_counter(), 0
        while True:
            if not self.pending:
                self._start()
            batch = self.pending.popleft()
            try:
                drawn, groups, stats = batch.future.result()
            except BaseException:
                self.pending.appendleft(batch)
                self.halt()  # the data position goes back to before this batch
                raise
            staleness = step - 1 - stats["version"]
            if staleness <= self.max_staleness:
                break
            discarded += 1  # sampled with weights more than max_staleness steps old: draw again
        while self.pool is not None and len(self.pending) < self.max_staleness:
            self._start()  # the next steps' rollouts, drawn while the learner trains on these
        info = {"rollout/version": stats["version"], "rollout/staleness": staleness,
                "rollout/discarded": discarded, "time/rollout_wait_s": time.perf_counter() - t0}
        return drawn, groups, stats | {"info": info}

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

    def _draw(self, batch: _Batch) -> tuple:
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
