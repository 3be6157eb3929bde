"""Data parallelism on torch.distributed (gloo, real processes started by torchrun)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.pause import CALLBACK

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node"]  # + N, --standalone, ...


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _run(cmd: list[str], timeout: int = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO)


@pytest.fixture(scope="module")
def learner_runs(tiny_overrides, tmp_path_factory):
    """The harness once in one process and once as 2 torchrun ranks, on the same recorded batch."""
    out = tmp_path_factory.mktemp("dist_learner")
    overrides = json.dumps(tiny_overrides + ["sampler.temperature=0.7", "train.micro_batch_size=3",
                                             "model.dtype=float32"])
    harness = str(REPO / "tests" / "dist_learner_harness.py")
    one = _run([sys.executable, harness, str(out / "one"), overrides])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(TORCHRUN + ["2", "--standalone", harness, str(out / "two"), overrides])
    assert two.returncode == 0, two.stderr[-3000:]
    fsdp2 = json.dumps([*json.loads(overrides), "train.strategy=fsdp2"])
    sharded = _run(TORCHRUN + ["2", "--standalone", harness, str(out / "fsdp2"), fsdp2])
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    return {"one": torch.load(out / "one" / "rank0.pt"),
            "ddp": (torch.load(out / "two" / "rank0.pt"), torch.load(out / "two" / "rank1.pt")),
            "fsdp2": (torch.load(out / "fsdp2" / "rank0.pt"), torch.load(out / "fsdp2" / "rank1.pt"))}


VARIANTS = {"grpo_seq_mean": 1e-6, "dapo_token_mean": 1e-6, "dr_grpo_constant": 1e-6, "grpo_mu2": 1e-6,
            "grpo_adamw": 1e-5, "dapo_rank1_empty": 1e-6, "grpo_beta": 1e-6}  # variant -> tolerance on every parameter (AdamW: see the harness)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_two_ranks_train_exactly_as_one_process_on_the_same_global_batch(learner_runs, variant, strategy):
    """Parameters after 1 and 3 steps equal to 1e-6 for every aggregation, for mu > 1 and with a
    reference: the weights normalise by both ranks' rows and the gradients are summed, whether each
    rank holds the whole model (ddp) or a shard of every parameter (fsdp2, gathered to compare)."""
    one = learner_runs["one"][variant]
    rank0, rank1 = (r[variant] for r in learner_runs[strategy])
    for step in (1, 3):
        for name, p in one["params"][step].items():
            assert torch.allclose(rank0["params"][step][name], p, atol=VARIANTS[variant], rtol=0), (variant, step, name)
            assert torch.equal(rank0["params"][step][name], rank1["params"][step][name]), (variant, step, name)
    moved = max((one["params"][3][k] - one["params"][1][k]).abs().max().item() for k in one["params"][1])
    assert moved > 1e-4  # steps 2-3 moved the weights: the comparison is not vacuous
    if strategy == "fsdp2":  # each rank held its shard of every parameter, not the whole model
        assert rank0["held"] + rank1["held"] == one["held"] and 0 < rank0["held"] < one["held"]
    else:
        assert rank0["held"] == rank1["held"] == one["held"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_two_ranks_log_the_one_process_metrics(learner_runs, variant, strategy):
    """Every learner metric rank 0 would log equals the 1-process value. learner/pad_frac is left
    out: it measures how each rank's own micro-batches pack, which differs by design."""
    one, rank0 = learner_runs["one"][variant], learner_runs[strategy][0][variant]
    for m1, m2 in zip(one["metrics"], rank0["metrics"]):
        assert set(m1) == set(m2)
        for k in m1:
            if k != "learner/pad_frac":
                assert m2[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-6), (variant, k)


# --- the whole loop under torchrun, through the real engines ------------------------------------

WALL_CLOCK = ("time/", "tokens_per_s")  # the only numbers a resumed run may log differently


def _metrics(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if not k.startswith(WALL_CLOCK)} for m in lines]


def _train_args(tiny_overrides, steps: int) -> list[str]:
    base = [o for o in tiny_overrides if not o.startswith("train.max_steps")]
    return base + [f"train.max_steps={steps}", "checkpoint.every=2", "checkpoint.keep_last=0",
                   "optim.lr=0.05", "algo.beta=0"]


@pytest.mark.engine
@pytest.mark.slow
def test_two_ranks_train_through_the_engines_then_resume_under_torchrun(tiny_overrides, tmp_path):
    """4 steps on 2 ranks (plain torchrun, no run dir given: both ranks find the same one), then a
    copy cut back to its step-2 checkpoint resumes under torchrun and logs the same numbers."""
    out = _run(TORCHRUN + ["2", "--standalone", "-m", "grpo_cli", *_train_args(tiny_overrides, 4)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1, runs  # one run dir for both ranks
    run = runs[0]
    step2 = run / "checkpoints" / "step_2"
    manifest = json.loads((step2 / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and "rank_1.pt" in manifest["files"]
    full = _metrics(run)
    assert [m["step"] for m in full] == [0, 1, 2, 3, 4, 4]  # eval, 4 steps, eval: rank 0 alone logs
    assert all(m["filter/groups_drawn"] == 4 for m in full[1:5])  # both ranks' 2 groups each

    resumed = tmp_path / "resumed"

    shutil.copytree(run, resumed)
    for name in ("step_4", "final"):
        shutil.rmtree(resumed / "checkpoints" / name)
    out = _run(TORCHRUN + ["2", "--standalone", "-m", "grpo_cli", f"resume={resumed}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _metrics(resumed) == full  # steps 3-4 again, from both ranks' restored RNGs and data
    final = torch.load(run / "checkpoints" / "final" / "trainer_state.pt", weights_only=False)
    again = torch.load(resumed / "checkpoints" / "final" / "trainer_state.pt", weights_only=False)
    assert final["data"] == again["data"] and final["step"] == again["step"] == 4


def test_resuming_with_another_number_of_ranks_is_a_one_line_error(tmp_path):
    from grpo_cli.parallel.dist import Dist
    from grpo_cli.state.checkpoint import CheckpointError, load

    (tmp_path / "manifest.json").write_text(json.dumps({"step": 2, "files": {}, "world_size": 2}))
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\), this run has 1: resume with train.nproc=2"):
        load(tmp_path, Dist())


@pytest.mark.engine
@pytest.mark.slow
def test_grpo_train_nproc_launches_the_ranks_itself(tiny_overrides, tmp_path):
    """`grpo-train train.nproc=2`: torch's elastic launcher starts 2 ranks, both in the given run dir."""
    run = tmp_path / "run"
    out = _run([sys.executable, "-m", "grpo_cli", *_train_args(tiny_overrides, 2), "train.nproc=2",
                f"hydra.run.dir={run}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((run / "checkpoints" / "final" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and "rank_1.pt" in manifest["files"]
    assert [m["step"] for m in _metrics(run)] == [0, 1, 2, 2]
    assert not (tmp_path / "outputs").exists()  # no rank made a run dir of its own
    # Greedy evaluation split over the ranks (8 + 8 of the 16 eval rows) equals one process's.
    single = tmp_path / "single"
    out = _run([sys.executable, "-m", "grpo_cli", *_train_args(tiny_overrides, 2), f"hydra.run.dir={single}"],
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _metrics(single)[0] == _metrics(run)[0] and "eval/accuracy" in _metrics(run)[0]
    # `grpo-train resume=DIR` starts as many ranks as the checkpoint was written by.
    out = _run([sys.executable, "-m", "grpo_cli", f"resume={run}", "train.max_steps=3"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((run / "checkpoints" / "final" / "manifest.json").read_text())
    assert manifest["step"] == 3 and manifest["world_size"] == 2


# --- errors ----------------------------------------------------------------------------------------

def test_prompts_per_step_that_does_not_split_is_a_one_line_error(tiny_overrides, tmp_path):
    out = _run([sys.executable, "-m", "grpo_cli", *tiny_overrides, "train.nproc=3",
                f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.prompts_per_step=4" in lines[0] and "3 processes" in lines[0], out.stderr
    assert not (tmp_path / "run").exists()  # nothing launched, nothing written


def test_under_plain_torchrun_a_config_error_is_said_once_not_once_per_rank(tiny_overrides, tmp_path):
    out = _run(TORCHRUN + ["2", "--standalone", "-m", "grpo_cli", *tiny_overrides, "algo.group_size=0"],
               timeout=120, cwd=tmp_path)
    assert out.returncode != 0
    said = [line for line in out.stderr.splitlines() if "grpo-train: config error" in line]
    assert len(said) == 1 and "algo.group_size=0" in said[0], out.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()  # nothing written


def test_torchrun_world_size_is_checked_too(tiny_overrides, monkeypatch):
    from grpo_cli.config.validate import ConfigError, validate
    from tests.conftest import compose

    monkeypatch.setenv("WORLD_SIZE", "3")  # inside a torchrun rank, the world is torchrun's
    with pytest.raises(ConfigError, match=r"train.prompts_per_step=4 is invalid: must divide by the 3"):
        validate(compose(tiny_overrides))


@pytest.mark.engine
def test_when_a_rank_dies_the_others_stop_with_an_error_not_a_hang(tiny_overrides, tmp_path):
    """`grpo-train train.nproc=2`; SIGKILL rank 1 at step 1: the launcher stops rank 0 and exits
    with one line naming the dead rank, well before any timeout."""
    import signal
    import time

    log = tmp_path / "err.txt"
    args = [sys.executable, "-m", "grpo_cli", *_train_args(tiny_overrides, 3), "train.nproc=2",
            "train.dist_timeout_s=120", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = _start_paused(args, "learner@1", "5", log, tmp_path)
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    t0 = time.monotonic()
    proc.wait(timeout=110)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 60  # the agent tore the group down; nobody waited for a timeout
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("grpo-train: error: rank 1 of 2 exited with code -9"), log.read_text()[-3000:]


def _start_paused(args: list[str], pause: str, pause_s: str, log: Path, cwd: Path) -> subprocess.Popen:
    """Start `args` (stderr to `log`) with the loop pausing `pause_s` seconds at `pause` (point@step),
    and return once a rank is paused there."""
    import time

    env = _env() | {"GRPO_CLI_TEST_PAUSE": pause, "GRPO_CLI_TEST_PAUSE_S": pause_s}
    with open(log, "w") as err:  # the child keeps its own copy of the file
        proc = subprocess.Popen(args + [CALLBACK], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
    deadline = time.monotonic() + 240
    while f"paused at {pause}" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"never reached {pause}"
        time.sleep(0.1)
    return proc


def _rank_pid(parent: int, rank: int) -> int:
    """The pid of torchrun rank `rank` among the launcher's children (their environment says RANK)."""
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            stat = (proc_dir / "stat").read_text()
            environ = (proc_dir / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and f"RANK={rank}".encode() in environ:
            return int(proc_dir.name)
    raise AssertionError(f"no rank {rank} under pid {parent}")


@pytest.mark.parametrize("other, says", [("model.lora.r=4", "does not shard LoRA adapters yet"),
                                         ("train.compile=true", "train.compile=true is not supported yet")])
def test_fsdp2_with_what_it_does_not_support_is_a_one_line_error(tiny_overrides, other, says):
    from grpo_cli.config.validate import ConfigError, validate
    from tests.conftest import compose

    validate(compose(tiny_overrides + ["train.strategy=fsdp2"]))
    with pytest.raises(ConfigError, match=rf"train.strategy='fsdp2' is invalid: fsdp2 .*{re.escape(says)}"):
        validate(compose(tiny_overrides + ["train.strategy=fsdp2", other]))


@pytest.mark.engine
def test_fsdp2_trains_through_the_engines_exports_whole_weights_and_resumes_exactly(tiny_overrides, tmp_path):
    """2 ranks holding half of every parameter: each engine gets the gathered weights (sampler and
    learner agree), the checkpoint is the whole model (transformers loads it), and a copy cut back
    to step 2 resumes from the gathered optimiser state to the same step 3."""
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    args = [o for o in _train_args(tiny_overrides, 3) if o != "algo.beta=0"] + ["algo.beta=0.04", "train.strategy=fsdp2"]
    out = _run([sys.executable, "-m", "grpo_cli", *args, "train.nproc=2", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    full = _metrics(run)
    steps = [m for m in full if "loss" in m]
    assert len(steps) == 3 and all(m["logprob_drift/max"] < 1e-4 for m in steps), steps
    assert all(m["kl/mean"] > 0 for m in steps[1:])  # the sharded reference took part
    model = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "final")
    first = AutoModelForCausalLM.from_pretrained(tiny_overrides[1].split("=", 1)[1])
    moved = max((a - b).abs().max().item() for a, b in zip(model.parameters(), first.parameters()))
    assert moved > 1e-3 and model.lm_head.weight is model.get_input_embeddings().weight  # whole, trained, tied

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "final")
    out = _run([sys.executable, "-m", "grpo_cli", f"resume={resumed}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _metrics(resumed) == full  # step 3 again: weights, RNGs and data restored
    again = AutoModelForCausalLM.from_pretrained(resumed / "checkpoints" / "final")
    for (name, a), b in zip(model.named_parameters(), again.parameters()):
        assert torch.equal(a, b), name  # the same update: AdamW's moments came back too


@pytest.mark.engine
@pytest.mark.slow
def test_sigterm_to_grpo_train_nproc_checkpoints_every_rank_and_says_how_to_go_on(tiny_overrides, tmp_path):
    """SIGTERM to `grpo-train train.nproc=2` mid-step: the launcher passes it on, both ranks finish the
    step and write one checkpoint together, and the launcher exits 143 with one line."""
    import signal

    run, log = tmp_path / "run", tmp_path / "err.txt"
    args = [sys.executable, "-m", "grpo_cli", *_train_args(tiny_overrides, 6), "checkpoint.every=0",
            "train.nproc=2", f"hydra.run.dir={run}"]
    proc = _start_paused(args, "learner@2", "3", log, tmp_path)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 143, log.read_text()[-3000:]
    assert log.read_text().strip().splitlines()[-1].startswith("grpo-train: stopped by signal 15")
    manifest = json.loads((run / "checkpoints" / "step_2" / "manifest.json").read_text())
    assert manifest["step"] == 2 and manifest["world_size"] == 2 and "rank_1.pt" in manifest["files"]


@pytest.mark.engine
@pytest.mark.slow
def test_a_two_rank_run_equals_the_one_process_run_end_to_end(tiny_overrides, tmp_path):
    """Issue 24: each rank samples its share with the seeds of the prompts' global indices, so the
    2-rank run draws exactly the 1-process run's samples and every logged number agrees to ~1e-6
    (the gradient all-reduce sums in another order). The fast check of the sampling half is
    tests/test_reproducible.py; the learner half, on recorded batches, is above."""
    args = _train_args(tiny_overrides, 3) + ["sampler.temperature=1.5",
                                             "model.dtype=float32"]
    for name, extra in (("one", []), ("two", ["train.nproc=2"])):
        out = _run([sys.executable, "-m", "grpo_cli", *args, *extra, f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["step"] for m in one] == [m["step"] for m in two]
    for a, b in zip(one, two):
        for k in set(a) - {"learner/pad_frac"}:  # how each rank's own micro-batches pack differs by design
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (a["step"], k)
