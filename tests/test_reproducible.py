"""Reproducible rollouts on the colocated engine (issue 24): every rollout is seeded from (run seed,
step, global prompt index), so ranks draw exactly the 1-process samples; the rewards' failure
counters survive a resume; a `-m` sweep job resumes. The server sampler's side (same samples as the
colocated engine, bit-identical resume, async) is in tests/test_server_sampler.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate

from grpo_cli.parallel.dist import Dist
from grpo_cli.rollout.sampler import rollout_seed
from grpo_cli.state.stop import RunStopped
from grpo_cli.train import run
from tests.conftest import REPO, compose

pytestmark = pytest.mark.engine


def test_rollout_seeds_are_distinct_in_the_bits_the_cpu_generator_keeps():
    """torch's CPU generator keeps a seed's low 32 bits only: seeds equal there draw equal samples."""
    seeds = [rollout_seed(7, step, i, ev) for step in range(1, 50) for i in range(64) for ev in (False, True)]
    assert len({s % 2**32 for s in seeds}) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert rollout_seed(7, 3, 5) != rollout_seed(8, 3, 5)
    same = [torch.empty(4).exponential_(generator=torch.Generator().manual_seed(s)) for s in (7, 7 + 2**33)]
    assert torch.equal(*same)  # why the low bits are the ones that must differ


def _draw(cfg, rank: int, world: int):
    from grpo_cli.learner.models import load_tokenizer
    from grpo_cli.rewards import Rewards
    from grpo_cli.rollout.colocated import ColocatedSampler
    from grpo_cli.rollout.generation import SingleTurn
    from grpo_cli.rollout.prompts import PromptFormatter, PromptStream, load_splits
    from grpo_cli.rollout.source import Draw

    fmt = PromptFormatter(cfg.data, load_tokenizer(cfg.model))
    stream = PromptStream(load_splits(cfg.data)[0], cfg.train.prompts_per_step, cfg.seed, cfg.data.shuffle)
    sampler = ColocatedSampler(cfg.sampler, cfg.model)  # the session's engine
    return Draw(stream, fmt, SingleTurn(sampler, fmt), Rewards.from_config(cfg.reward), instantiate(cfg.algo.batch_filter),
                cfg.algo.group_size, Dist(rank=rank, world=world), cfg.seed)


def test_two_ranks_draw_exactly_the_samples_of_one_process(tiny_overrides):
    """Each rank's share of a step, re-draws of the batch filter included, is sampled with the seeds
    of its global prompt indices: rank 0 + rank 1 == the 1-process draw, token for token, whatever
    else the engine has drawn before. Before issue 24
    the ranks drew from their engines' generators, so a 2-rank run matched one process only on
    recorded batches."""
    cfg = compose(tiny_overrides + ["sampler.temperature=1.5"])
    one = _draw(cfg, 0, 1)
    ranks = [_draw(cfg, r, 2) for r in (0, 1)]
    for step in (1, 2):
        for draw in (one, *ranks):
            draw.step, draw.drawn = step, 0  # as Draw.__call__(step) sets them
        whole = [one.groups(), one.groups()]  # a draw and a re-draw (a batch filter's), in one step
        shares = [[d.groups(), d.groups()] for d in ranks]
        for k in (0, 1):
            got = shares[0][k].rollouts.completion_ids + shares[1][k].rollouts.completion_ids
            assert got == whole[k].rollouts.completion_ids, (step, k)
        group = whole[0].rollouts.completion_ids[: cfg.algo.group_size]
        assert len({tuple(c) for c in group}) > 1  # a group's completions differ (seed + j each)


def always_fails(prompts, completions, **_):
    raise RuntimeError("judge unreachable")


def test_a_resumed_run_keeps_the_failure_counters_of_its_rewards(tiny_overrides, tmp_path):
    """A reward fails on every call. Two steps with no limit, then a resume with
    reward.max_failures_in_a_row=3 stops after step 3 (the third failure in a row), as the
    uninterrupted run would. Before: the counters restarted at 0, so the resumed run trained on."""
    base = tiny_overrides + ["data.eval_holdout=0", "+reward.funcs.broken.fn=tests.test_reproducible.always_fails",
                             "reward.max_failures_in_a_row=0"]
    run(compose(base), run_dir=tmp_path)
    again = [f"resume={tmp_path}", "train.max_steps=5", "reward.max_failures_in_a_row=3"]
    with pytest.raises(RunStopped, match=r"reward 'broken' failed on 3 calls in a row"):
        run(compose(base + again), run_dir=tmp_path, overrides=again)
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.mark.slow  # ~60 s; resume itself is in the default suite (tests/test_resume.py)
def test_a_sweep_job_resumes_in_its_own_dir(tiny_overrides, tmp_path):
    """`grpo-train -m ... resume=auto` run again (a requeued sweep): each job continues from its own
    checkpoint in its own dir and logs every step once."""
    base = ["-m"] + [o for o in tiny_overrides if not o.startswith("train.max_steps")] + [
        "algo.beta=0,0.04", "data.eval_holdout=0", f"hydra.sweep.dir={tmp_path / 'sw'}", "resume=auto"]
    for steps in (1, 2):
        out = subprocess.run([sys.executable, "-m", "grpo_cli", *base, f"train.max_steps={steps}"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path,
                             env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr[-3000:]
    for job in ("0", "1"):
        lines = [json.loads(x) for x in (tmp_path / "sw" / job / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in lines] == [1, 2], job
        state = __import__("torch").load(tmp_path / "sw" / job / "checkpoints" / "final" / "trainer_state.pt",
                                         weights_only=False)
        assert state["step"] == 2
