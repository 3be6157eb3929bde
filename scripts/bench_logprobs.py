"""Peak memory and time of per-token log-probs (forward + backward): naive full logits vs chunked.

    python scripts/bench_logprobs.py                          # Qwen's vocab 151,936, hidden 896
    python scripts/bench_logprobs.py --tokens 2048 4096 16384 --device cuda

Each (path, size) runs in a fresh subprocess. Peak memory is what the path adds on top of its inputs
(hidden states, lm_head): `torch.cuda.max_memory_allocated` on CUDA, the process's peak RSS
(VmHWM) on the CPU. The naive path is skipped where its logits alone would not fit in free memory.
Values and gradients of the two paths are compared at the smallest size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _full_logits(hidden, lm_head, targets, temperature: float):
    """The naive path: every [tokens, vocab] fp32 logit at once."""
    log_p = (lm_head(hidden).float() / temperature).log_softmax(-1)  # [N, V]
    return log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1), None


def one(path: str, tokens: int, vocab: int, hidden: int, device: str, compare: bool) -> dict:
    import torch

    from grpo_cli.learner.logprobs import token_logprobs

    torch.set_num_threads(2) if device == "cpu" else None
    g = torch.Generator(device=device).manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False, device=device)
    with torch.no_grad():
        head.weight.normal_(0, 0.02, generator=g)
    h = torch.randn(tokens, hidden, device=device, generator=g).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device=device, generator=g)
    fn = token_logprobs if path == "chunked" else _full_logits
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = _hwm_bytes()
    t0 = time.perf_counter()
    logp, _ = fn(h, head, targets, 1.0)
    logp.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _hwm_bytes()) - base
    out = {"path": path, "tokens": tokens, "peak_gib": peak / 2**30, "seconds": seconds}
    if compare:
        torch.save({"logp": logp.detach().cpu(), "gh": h.grad.cpu(), "gw": head.weight.grad.cpu()}, f"/tmp/_lp_{path}.pt")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096, 16384])
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: PATH TOKENS in this process
    p.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.vocab, a.hidden, a.device, a.compare)))
        return

    import torch

    free = torch.cuda.mem_get_info()[0] if a.device == "cuda" else _available_bytes()
    rows = []
    for i, n in enumerate(sorted(a.tokens)):
        for path in ("naive", "chunked"):
            need = 3 * n * a.vocab * 4  # logits, log-softmax and their gradient, fp32
            if path == "naive" and need > 0.8 * free:
                rows.append({"path": path, "tokens": n, "skipped": f"needs ~{need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"})
                continue
            cmd = [sys.executable, __file__, "--one", path, str(n), "--vocab", str(a.vocab), "--hidden", str(a.hidden),
                   "--device", a.device] + (["--compare"] if i == 0 else [])
            rows.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]))
    ref, new = torch.load("/tmp/_lp_naive.pt"), torch.load("/tmp/_lp_chunked.pt")
    rel = {k: ((new[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref}
    print(f"vocab {a.vocab}, hidden {a.hidden}, {a.device}, fp32, forward + backward of log pi(target)")
    print(f"{'tokens':>8} {'path':>8} {'peak GiB':>9} {'seconds':>8}")
    for r in rows:
        extra = r.get("skipped") or f"{r['peak_gib']:9.2f} {r['seconds']:8.2f}"
        print(f"{r['tokens']:>8} {r['path']:>8} {extra}")
    for n in sorted(a.tokens):
        pair = {r["path"]: r for r in rows if r["tokens"] == n and "peak_gib" in r}
        if len(pair) == 2:
            print(f"{n} tokens: chunked peak = {pair['chunked']['peak_gib'] / pair['naive']['peak_gib']:.1%} of naive, "
                  f"time {pair['naive']['seconds'] / pair['chunked']['seconds']:.2f}x faster")
    print("max relative difference at the smallest size: " + ", ".join(f"{k} {v:.1e}" for k, v in rel.items()))


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
