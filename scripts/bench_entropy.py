"""What logging the entropy every step costs: chunked log-probs forward + backward, with and without it.

    python scripts/bench_entropy.py                       # 1024 tokens, Qwen's vocab 151,936, hidden 896, CPU
    python scripts/bench_entropy.py --tokens 16384 --device cuda

The learner always asks `token_logprobs` for the entropy (logged as `entropy/mean`); without an
entropy bonus it is detached, so only the forward pays (one softmax-weighted sum per chunk). With a
bonus the backward also runs the entropy's gradient. Median of --repeats runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()

    import torch

    from grpo_cli.learner.logprobs import token_logprobs

    g = torch.Generator(device=a.device).manual_seed(0)
    head = torch.nn.Linear(a.hidden, a.vocab, bias=False, device=a.device)
    with torch.no_grad():
        head.weight.normal_(0, 0.02, generator=g)
    h = torch.randn(a.tokens, a.hidden, device=a.device, generator=g).requires_grad_()
    targets = torch.randint(0, a.vocab, (a.tokens,), device=a.device, generator=g)

    def step(mode: str) -> float:
        h.grad, head.weight.grad = None, None
        if a.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logp, ent = token_logprobs(h, head, targets, 1.0, with_entropy=mode != "none")
        loss = logp.sum() + (0.01 * ent.sum() if mode == "bonus" else ent.detach().sum())
        loss.backward()
        if a.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    print(f"{a.tokens} tokens, vocab {a.vocab}, hidden {a.hidden}, {a.device}, threads {torch.get_num_threads()}")
    times = {}
    for mode in ("none", "logged", "bonus"):
        step(mode)  # warm-up
        times[mode] = statistics.median(step(mode) for _ in range(a.repeats))
    for mode, label in (("none", "log-probs only"), ("logged", "+ entropy, logged (detached)"),
                        ("bonus", "+ entropy bonus (its backward)")):
        print(f"{label:32s} {times[mode]:7.3f} s  ({times[mode] / times['none']:.2f}x)")


if __name__ == "__main__":
    main()
