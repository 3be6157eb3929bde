"""Sampler tokens/s with and without per-request seeds (sampler.reproducible), on the bench workload.

    .venv/bin/python scripts/bench_seeded.py [--rounds 12]

The workload of scripts/bench_cpu.py (tiny random Qwen2, hidden 256, 4 layers, vocab 128; 16 prompts
x 8 completions, <= 64 new tokens, temperature 1) on the standalone colocated engine, in one process:
each round draws one batch of prompts twice, seeded (`rollout_seed`, as a run does) and unseeded (the
engine's generator), alternating which goes first; the first round is a warm-up. Prints the median
tokens/s of each way and their ratio. vLLM's sampler draws the noise of seeded requests one request
at a time (v1/sample/ops/topk_topp_sampler.py: random_sample), which is where a cost would show.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench_cpu import SEED, B, G, cli_overrides, prepare  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=12)
    a = p.parse_args()
    from transformers import set_seed

    from grpo_cli.config.validate import compose
    from grpo_cli.learner.models import load_tokenizer
    from grpo_cli.rollout.colocated import ColocatedSampler
    from grpo_cli.rollout.prompts import PromptFormatter, PromptStream, as_batch, load_splits
    from grpo_cli.rollout.sampler import rollout_seed

    work = Path(tempfile.mkdtemp(prefix="bench-seeded-"))
    model, data = prepare(work)
    cfg = compose(cli_overrides(model, data, 1, "fp32", []))
    set_seed(cfg.seed)
    fmt = PromptFormatter(cfg.data, load_tokenizer(cfg.model))
    stream = PromptStream(load_splits(cfg.data)[0], B, cfg.seed, cfg.data.shuffle)
    sampler = ColocatedSampler(cfg.sampler, cfg.model)
    rates: dict[str, list[float]] = {"seeded": [], "unseeded": []}
    for step in range(a.rounds + 1):
        ids = fmt.encode(as_batch(stream.next(), fmt).prompts)
        seeds = [rollout_seed(SEED, step + 1, i) for i in range(len(ids))]
        ways = [("seeded", seeds), ("unseeded", None)]
        for name, s in ways if step % 2 else ways[::-1]:
            t0 = time.perf_counter()
            r = sampler.generate(ids, n=G, seeds=s)
            if step:  # round 0 warms up
                rates[name].append(r.num_tokens / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps({"median_tokens_per_s": med, "seeded_over_unseeded": med["seeded"] / med["unseeded"],
                      "rounds": a.rounds, "per_round": rates}, indent=1))


if __name__ == "__main__":
    main()
