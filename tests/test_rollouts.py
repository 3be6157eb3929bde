"""Asynchronous rollouts without an engine: the producer's bookkeeping (versions, staleness, data
position for checkpoints) and the learner's pi_old, on hand-built inputs."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from grpo_cli.learner.learner import RolloutBatch
from grpo_cli.rewards import RewardResult
from grpo_cli.rollout.filters import ScoredGroups
from grpo_cli.rollout.sampler import Rollouts
from grpo_cli.rollout.source import RolloutSource, StepRollouts
from tests.conftest import compose, make_learner


class Stream:  # the data position only, as PromptStream keeps it
    def __init__(self):
        self.offset = 0

    def next(self):
        self.offset += 1
        return self.offset

    def state_dict(self):
        return {"offset": self.offset}

    def load_state_dict(self, state):
        self.offset = state["offset"]


class Policy:
    """Stands in for the sampler's weight version: `produce` draws a batch (a prompt index) with the
    current version, as ServerSampler.generate reads it; the test plays the learner's syncs."""

    def __init__(self, stream, delay=0.0):
        self.stream, self.version, self.delay, self.threads, self.steps = stream, 0, delay, [], []

    def produce(self, step: int) -> StepRollouts:
        self.steps.append(step)
        self.threads.append(threading.current_thread().name)
        version, prompt = self.version, self.stream.next()
        time.sleep(self.delay)
        return _rollouts(prompt, version, self.delay)


def _rollouts(prompt: int, version: int, sample_s: float = 0.0) -> StepRollouts:
    """One group of one completion for prompt id `prompt`, sampled by weights `version`."""
    r = Rollouts([[prompt]], [[prompt]], [str(prompt)], ["stop"], [[0.0]], version=version)
    groups = ScoredGroups([str(prompt)], {}, r, RewardResult(torch.zeros(1), {}, {}), 1)
    return StepRollouts(groups, groups, sample_s=sample_s)


def _prompt(rollouts: StepRollouts) -> int:
    return rollouts.trained.rollouts.prompt_ids[0][0]


def _run(max_staleness, steps=5, delay=0.0):
    stream = Stream()
    policy = Policy(stream, delay)
    source = RolloutSource(policy.produce, stream, max_staleness)
    infos = []
    for step in range(1, steps + 1):
        rollouts = source.next(step)
        infos.append((_prompt(rollouts), rollouts.info))
        time.sleep(0.02)  # the learner trains on it ...
        source.settle()  # (as the loop does: batches drawn ahead finish on the weights they started with)
        policy.version = step  # ... and syncs the sampler
    source.close()
    return infos, policy


def test_staleness_zero_draws_each_step_in_the_loop_thread_from_the_latest_weights():
    infos, policy = _run(0)
    assert [p for p, _ in infos] == [1, 2, 3, 4, 5]  # prompts in order, none drawn ahead
    assert [i["rollout/version"] for _, i in infos] == [0, 1, 2, 3, 4]
    assert all(i["rollout/staleness"] == 0 for _, i in infos)
    assert set(policy.threads) == {threading.current_thread().name}


def test_staleness_one_overlaps_and_is_never_older_than_one_step():
    infos, policy = _run(1)
    versions = [i["rollout/version"] for _, i in infos]
    assert [p for p, _ in infos] == [1, 2, 3, 4, 5]  # every prompt used once, in order
    assert all(0 <= i["rollout/staleness"] <= 1 for _, i in infos)
    assert versions == [0, 0, 1, 2, 3]  # drawn one step ahead, while the previous step trained
    assert policy.steps == [1, 2, 3, 4, 5, 6]  # each batch drawn for (and seeded by) the step that trains on it
    assert any(name.startswith("rollouts") for name in policy.threads)


def test_a_rollout_older_than_max_staleness_is_discarded_and_drawn_again():
    stream = Stream()
    policy = Policy(stream)
    source = RolloutSource(policy.produce, stream, 1)
    source.next(1)  # starts drawing step 2's batch with version 0
    time.sleep(0.05)
    policy.version = 5  # the learner moved on by several steps (e.g. a long evaluation)
    info = source.next(7).info  # the batch of version 0 is 6 steps old
    assert info["rollout/discarded"] == 1 and info["rollout/staleness"] <= 1
    source.close()


def test_a_checkpoint_keeps_the_batches_drawn_ahead_and_a_resumed_source_hands_them_out():
    stream = Stream()
    policy = Policy(stream, delay=0.05)
    source = RolloutSource(policy.produce, stream, 2)
    assert _prompt(source.next(1)) == 1
    # Two batches (prompts 2, 3, for steps 2, 3) are drawn ahead: the checkpoint holds them, and the
    # position after them. (Before: the position after prompt 1, so a resume drew 2 and 3 again from
    # other weights than the uninterrupted run's.)
    state = source.state_dict()
    assert state["offset"] == 3 and [(step, before) for step, before, _ in state["ahead"]] == [(2, {"offset": 1}),
                                                                                               (3, {"offset": 2})]
    source.close()
    fresh_stream = Stream()
    policy = Policy(fresh_stream)
    policy.version = 1  # the checkpoint's weights (step 1)
    resumed = RolloutSource(policy.produce, fresh_stream, 2)
    resumed.load_state_dict(state)
    got = []
    for step in (2, 3, 4):
        got.append(resumed.next(step))
        resumed.settle()
        policy.version = step
    assert [_prompt(r) for r in got] == [2, 3, 4]
    assert [r.version for r in got[:2]] == [0, 0]  # the uninterrupted run's rollouts, not new ones
    resumed.close()


def test_a_stop_keeps_finished_batches_and_drops_a_failed_one():
    stream = Stream()
    calls = []

    def produce(step):
        calls.append(step)
        prompt = stream.next()
        if step == 3:
            raise ConnectionError("server gone")
        return _rollouts(prompt, 0)

    source = RolloutSource(produce, stream, 2)
    source.next(1)
    source.settle()  # as the loop does before pushing weights
    source.halt()  # step 2's batch is kept, step 3's (failed) dropped: the position goes back before it
    assert stream.state_dict() == {"offset": 2} and [b.step for b in source.pending] == [2]
    source.close()


def test_a_failed_draw_puts_the_data_position_back():
    stream = Stream()

    def produce(step):
        stream.next()
        raise ConnectionError("server gone")

    source = RolloutSource(produce, stream, 0)
    with pytest.raises(ConnectionError):
        source.next(1)
    assert stream.state_dict() == {"offset": 0}


@pytest.mark.parametrize("is_correction", ["NoCorrection", "TruncatedIS"])
def test_stale_pi_old_is_the_samplers_logprobs(tiny_overrides, is_correction):
    """Same rollouts, sampler log-probs equal to the learner's: max_staleness=1 (pi_old = the
    sampler's log-probs) makes exactly the update of the on-policy loop (pi_old = the learner's)."""
    def trained(max_staleness):
        torch.manual_seed(0)
        cfg = compose(tiny_overrides + [f"algo.max_staleness={max_staleness}", "optim.lr=1e-2",
                                        f"algo.is_correction._target_=grpo_cli.algo.correction.{is_correction}"])
        learner = make_learner(cfg, total_optim_steps=1)
        prompts, completions = [[5, 6], [5, 6], [7], [7]], [[30, 31], [40, 41, 42], [3], [9, 9]]
        batch = RolloutBatch.build(prompts, completions, [[0.0] * len(c) for c in completions],
                                   torch.tensor([1.0, -1.0, 0.5, -0.5]), 0)
        with torch.no_grad():
            batch.sampler_logp = learner.completion_logprobs(learner.policy, batch) * batch.completion_mask
        learner.train_step(batch)
        return learner.old_from_sampler, dict(learner.weights())

    (on_policy_flag, on_policy), (stale_flag, stale) = trained(0), trained(1)
    assert not on_policy_flag and stale_flag == (is_correction == "NoCorrection")
    for name, w in on_policy.items():
        assert torch.allclose(w, stale[name], atol=1e-6), name
