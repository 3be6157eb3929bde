"""The matmul peak and the MFU of the benchmarks (scripts/bench_cpu.py, scripts/gpu_check.py).

An MFU is only as good as the peak it is divided by. A peak measured once, while other jobs held
the cores, is too low, and the MFU above it too high (gpu_check once printed "151.2 % of 84
GFLOP/s"). So the peak here is measured once the cores are idle, as the best of several timed
rounds of several sizes of x @ W.T (nn.Linear's layout): interference only ever makes a round
slower. An MFU over 100 % is still possible (a peak measured low, a FLOP count too high); it is
reported as a measurement error, never as a number.
"""

from __future__ import annotations

import math
import os
import time

CPU_SIZES = (512, 1024, 2048)  # square products; the fastest size wins
CUDA_SIZES = (4096, 8192)


def cpu_seconds() -> float:
    """Busy CPU seconds of all cores since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def cores_busy(window: float = 2.0) -> float:
    """Share of all cores busy over the next `window` seconds (0..1)."""
    c0 = cpu_seconds()
    time.sleep(window)
    return (cpu_seconds() - c0) / (window * os.cpu_count())


def wait_idle(max_wait: float, busy_max: float = 0.2, quiet=False) -> float:
    """Wait (at most `max_wait` s) until other jobs leave the cores (< `busy_max` of them busy over
    2 s). Returns the last share measured (> busy_max: it gave up waiting)."""
    deadline = time.monotonic() + max_wait
    while (busy := cores_busy()) > busy_max and time.monotonic() < deadline:
        if not quiet:
            print(f"  cores {busy:.0%} busy with other work: waiting 30 s", flush=True)
        time.sleep(min(30.0, max(deadline - time.monotonic(), 0.0)))
    return busy


def matmul_peak(dtype=None, device: str = "cpu", rounds: int = 5, round_s: float = 0.2, sizes=None,
                max_wait: float = 120.0) -> dict:
    """The best GFLOP/s of F.linear(x, W) on `device` (CPU: torch's thread count) for `dtype`.

    Waits (at most `max_wait` s) for idle cores, then for each size: one warm-up product, then
    `rounds` rounds of as many products as fill `round_s` seconds; the fastest round of the fastest
    size is the peak. Returns {"gflops", "n" (the size), "busy" (share of the cores busy just
    before; > 0.2 means other work ran and the peak may be low)}.
    """
    import torch

    dtype = dtype or torch.float32
    busy = wait_idle(max_wait, quiet=True) if device == "cpu" else 0.0
    best = {"gflops": 0.0, "n": 0, "busy": busy}
    for n in sizes or (CUDA_SIZES if device == "cuda" else CPU_SIZES):
        a = torch.randn(n, n, device=device).to(dtype)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        torch.nn.functional.linear(a, a)  # warm-up: kernel selection, page faults, clocks
        sync()
        once = time.perf_counter() - t0
        inner = max(1, math.ceil(round_s / max(once, 1e-6)))
        fastest = math.inf
        for _ in range(rounds):
            sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                torch.nn.functional.linear(a, a)
            sync()
            fastest = min(fastest, (time.perf_counter() - t0) / inner)
        if (gflops := 2 * n**3 / fastest / 1e9) > best["gflops"]:
            best |= {"gflops": gflops, "n": n}
    return best


def mfu(flops: float, seconds: float, peak_gflops: float) -> tuple[float | None, str | None]:
    """(MFU, None), or (None, why) when it is over 100 %: that is a measurement error (the peak was
    measured low, e.g. on a busy machine, or the FLOP count is too high), not a result."""
    value = flops / seconds / (peak_gflops * 1e9)
    if value <= 1.0:
        return value, None
    return None, (f"MFU {100 * value:.0f} % > 100 % is a measurement error: {flops / seconds / 1e9:,.0f} GFLOP/s "
                  f"achieved against a measured peak of {peak_gflops:,.0f} (peak measured low, or FLOPs overcounted)")


def linear_params(model) -> tuple[int, int]:
    """(weights of every nn.Linear but the output head, the output head's V x H): what one token
    multiplies through in the backbone, and in lm_head (which the learner runs only at the
    positions that predict a completion token)."""
    import torch

    head = model.get_output_embeddings()
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    return n, head.weight.numel()


def learner_flops(body: int, head: int, backbone_tokens: float, head_tokens: float, passes: int) -> float:
    """Matmul FLOPs a learner step needs: `passes` FLOPs per weight per token (6 for the policy's
    forward + backward, + 2 for a reference forward, + 2 for a separate old-log-prob forward). The
    backbone runs on `backbone_tokens` (each prompt counted once per group: the least the update
    needs; recomputation under gradient checkpointing is not counted), lm_head only on
    `head_tokens`, the positions that predict a completion token."""
    return passes * (body * backbone_tokens + head * head_tokens)
