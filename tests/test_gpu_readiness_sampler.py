"""GPU-only sampler behaviour checked here on the CPU (issue 19): the config refusals, and the
server's NCCL weight sync and the colocated engine's lifecycle driven against recording fakes of
vLLM's trainer endpoint and `vllm.LLM`. What only a GPU shows is in scripts/gpu_check.py.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import pytest
import torch
from safetensors.torch import load_file

from grpo_cli.config.validate import compose, validate
from grpo_cli.parallel.env import shared_gpu
from grpo_cli.rollout import colocated as sampler_mod
from grpo_cli.rollout import server as ss
from grpo_cli.rollout.colocated import ColocatedSampler
from grpo_cli.rollout.server import (
    ServerSampler,
    ShmWeightSync,
    nccl_master_address,
    weight_sync_kind,
)


def _cli(args, tmp_path):
    out = subprocess.run([sys.executable, "-m", "grpo_cli", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert not (tmp_path / "run").exists()
    return out


# --- defect 2: tensor parallelism of the colocated engine --------------------------------------

def test_colocated_tensor_parallel_is_one_config_line_naming_the_server_sampler(tmp_path):
    out = _cli(["sampler.tensor_parallel_size=2"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "grpo-train: config error: sampler.tensor_parallel_size=2 is invalid: must be 1 with the colocated sampler "
        "(one unsharded engine per learner rank): to shard the engine, use the server sampler: sampler=vllm-server "
        "sampler.devices=\"'1,2'\" sampler.tensor_parallel_size=2"]


def test_the_server_sampler_may_shard_its_engine():
    validate(compose(["sampler=vllm-server", "sampler.devices='1,2'", "sampler.tensor_parallel_size=2"]))


# --- defect 8: a server grpo-cli starts must not land on the learner's GPU ---------------------

@pytest.mark.parametrize("visible,devices,tp,learner,shared", [
    (None, None, 1, "cuda", "0"),          # inherits: vLLM takes the first visible GPU, the learner's
    (None, None, 1, "cuda:1", None),       # the server on GPU 0, the learner on 1
    (None, None, 2, "cuda:1", "1"),        # TP=2 inherits GPUs 0 and 1
    (None, "1", 1, "cuda:0", None),        # the README's layout
    (None, "0", 1, "cuda:0", "0"),
    (None, "2,3", 2, "cuda:3", "3"),
    ("4,5", "5", 1, "cuda:1", "5"),        # cuda:1 is physical GPU 5 under CUDA_VISIBLE_DEVICES=4,5
    ("4,5", "5", 1, "cuda:0", None),
    (None, None, 1, "cpu", None),
])
def test_shared_gpu_maps_the_learner_device_through_visible_devices(monkeypatch, visible, devices, tp, learner, shared):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert shared_gpu(devices, tp, learner) == shared


def test_a_server_on_the_learners_gpu_is_one_config_line(tmp_path):
    out = _cli(["sampler=vllm-server", "train.device=cuda:0"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "grpo-train: config error: sampler.devices=None is invalid: the vLLM server would take "
        "sampler.gpu_memory_utilization=0.9 of GPU 0, the learner's (train.device=cuda:0): give it its own, "
        "e.g. sampler.devices=1, or share with sampler.gpu_memory_utilization=0.3"]


@pytest.mark.parametrize("overrides", [
    ["sampler.devices=1"],                                  # its own GPU
    ["sampler.gpu_memory_utilization=0.3"],                 # a share that leaves the learner room
    ["sampler.url=http://10.0.0.5:8000"],                   # the user's server: its devices are not ours
])
def test_a_server_beside_the_learner_is_accepted(overrides):
    validate(compose(["sampler=vllm-server", "train.device=cuda:0", *overrides]))


# --- the server's weight sync (defects 3 and 4, and the minor ones) against recording fakes -------

class _Response:
    status_code, text = 200, ""

    def __init__(self, body):
        self.body, self.content = body, b"{}"

    def json(self):
        return self.body


class _Http:
    """requests.Session of a user's VLLM_SERVER_DEV_MODE=1 server: answers and records each path."""

    def __init__(self, calls):
        self.calls = calls

    def mount(self, prefix, adapter):  # the sampler's connection pool, one connection per request in flight
        pass

    def request(self, method, url, **_):
        path = url.split(":8000", 1)[1]
        self.calls.append(path)
        return _Response({"data": [{"id": "m"}]} if path == "/v1/models" else {})

    def close(self):
        pass


@pytest.fixture
def nccl_server(monkeypatch):
    """A ServerSampler on a fake server whose NCCL endpoint records what the learner side does."""
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine

    calls = []

    class Engine:
        def __init__(self, source):
            self.source = source

        def send_weights(self):
            calls.append(("meta", [(m.name, m.dtype) for m in self.source.metadata()]))
            calls.append(("sent", [(n, t.dtype) for n, t in self.source]))

        def shutdown(self):
            calls.append("trainer_shutdown")

    def trainer_init(info, *, client, source):
        calls.append(("trainer_init", info.master_address))
        return Engine(source)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # train.device=cuda:1 resolves
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(NCCLTrainerWeightTransferEngine, "trainer_init", staticmethod(trainer_init))
    monkeypatch.setattr(ss.requests, "get", lambda url, **_: _Response({"world_size": 1}))
    monkeypatch.setattr(ss.requests, "Session", lambda: _Http(calls))
    monkeypatch.setattr("vllm.utils.network_utils.get_ip", lambda: "10.1.2.3")

    def make(*overrides, learner="cuda:1"):
        cfg = compose(["sampler=vllm-server", "sampler.url=http://10.0.0.5:8000", "model.path=m",
                       "model.dtype=float32", "sampler.dtype=bfloat16", *overrides])
        return ServerSampler(cfg.sampler, cfg.model, "unused", learner)

    return make, calls


def test_nccl_sync_sets_the_learners_device_before_opening_the_endpoint_at_its_routable_address(nccl_server):
    make, calls = nccl_server
    make().close()
    events = [c for c in calls if isinstance(c, tuple)]
    assert events[:2] == [("set_device", "cuda:1"), ("trainer_init", "10.1.2.3")]


def test_the_nccl_address_can_be_set(nccl_server):
    make, calls = nccl_server
    make("sampler.weight_sync_address=192.168.7.7").close()
    assert ("trainer_init", "192.168.7.7") in calls


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"])
def test_a_server_on_loopback_is_dialled_on_loopback(url):
    cfg = compose(["sampler=vllm-server"])
    assert nccl_master_address(cfg.sampler, url) == "127.0.0.1"


def test_the_nccl_push_travels_in_the_servers_dtype(nccl_server):
    make, calls = nccl_server
    s = make()
    s.load_weights([("w", torch.ones(4, dtype=torch.float32)), ("b", torch.ones(2, dtype=torch.float32))], version=1)
    assert ("meta", [("w", torch.bfloat16), ("b", torch.bfloat16)]) in calls
    assert ("sent", [("w", torch.bfloat16), ("b", torch.bfloat16)]) in calls
    s.close()


def test_closing_drops_the_servers_end_of_the_weight_transfer_group(nccl_server):
    make, calls = nccl_server
    make().close()
    assert calls.index("/shutdown_weight_transfer_engine") < calls.index("trainer_shutdown")


def test_auto_weight_sync_follows_the_learner_not_the_machine(nccl_server, tmp_path):
    make, calls = nccl_server  # CUDA "available"
    cfg = compose(["sampler=vllm-server"]).sampler
    assert weight_sync_kind(cfg, torch.device("cpu")) == "shm"
    assert weight_sync_kind(cfg, torch.device("cuda:0")) == "nccl"
    s = make(learner="cpu")
    assert isinstance(s.sync, ShmWeightSync) and not any(isinstance(c, tuple) and c[0] == "trainer_init" for c in calls)
    s.close()


def test_the_shm_push_travels_in_the_servers_dtype():
    posted = []
    sync = ShmWeightSync(lambda path, body: posted.append(body), torch.bfloat16)
    try:
        sync.send([("w", torch.ones(4)), ("tied", torch.ones(4))])
        saved = load_file(str(sync.dir / "model.safetensors"))
        assert {k: v.dtype for k, v in saved.items()} == {"w": torch.bfloat16, "tied": torch.bfloat16}
        assert posted[0]["method"] == "reload_weights"
    finally:
        sync.close()


# --- the colocated engine's lifecycle across a sweep's jobs, against a fake vllm.LLM -------------

class _FakeLLM:
    """vllm.LLM's surface that ColocatedSampler uses; sleeping engines refuse work, as level 2's would."""

    built: list = []

    def __init__(self, **args):
        self.sleeping, self.shut = False, False
        self.llm_engine = self  # the engine holds a cycle back to the LLM, as vLLM's objects do
        self.engine_core = self
        self._finalizer = self._finalize
        _FakeLLM.built.append(weakref.ref(self))

    def _finalize(self):
        self.shut = True

    def is_sleeping(self):
        return self.sleeping

    def sleep(self, level):
        self.sleeping = True

    def wake_up(self, tags=None):
        self.sleeping = False

    def collective_rpc(self, method, kwargs):
        if self.sleeping:
            raise RuntimeError("reload_weights into a sleeping engine")
        list(kwargs["weights_iterator"])

    def reset_prefix_cache(self):
        pass


@pytest.fixture
def fake_engines(monkeypatch):
    import vllm

    _FakeLLM.built = []
    monkeypatch.setattr(vllm, "LLM", _FakeLLM)
    monkeypatch.setattr(sampler_mod, "_ENGINES", {})  # the suite's real engine is left alone
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # sleep mode is allowed
    return lambda *o: compose(["model.path=m", "sampler=vllm", *o])


def test_a_job_after_one_that_failed_asleep_gets_an_awake_engine(fake_engines):
    cfg = fake_engines("sampler.sleep_level=2")
    first = ColocatedSampler(cfg.sampler, cfg.model)
    first.load_weights([("w", torch.ones(1))])
    first.sleep()  # ... and the job fails here, while the learner runs
    second = ColocatedSampler(cfg.sampler, cfg.model)  # the sweep's next job
    second.load_weights([("w", torch.ones(1))])
    assert not second.llm.is_sleeping()
    assert first.llm.shut  # the asleep engine was shut down, not left beside the new one


def test_a_replaced_engine_is_collected_and_its_cuda_memory_emptied_before_the_next_starts(fake_engines, monkeypatch):
    events = []

    def empty_cache():  # the old engine must be gone by now, or its memory is not free to empty
        events.append([ref() is None for ref in _FakeLLM.built])

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    cfg = fake_engines()
    ColocatedSampler(cfg.sampler, cfg.model)
    gc.disable()  # only the sampler's own collection may free the cycle
    try:
        cfg2 = fake_engines("sampler.max_model_len=1024")  # new engine args: a new engine
        ColocatedSampler(cfg2.sampler, cfg2.model)
    finally:
        gc.enable()
    assert events == [[], [True]]  # before the first engine (none yet), and before the second
    assert len(_FakeLLM.built) == 2
