"""Where a learner step of the bench-cpu workload spends its time (torch.profiler, CPU).

    .venv/bin/python scripts/profile_learner.py [--shape bench|demo] [--steps 3] [--rows 25] [--shapes]
        [--glibc-default] [KEY=VALUE ...]

Builds the bench model (examples.demo.tiny, random init) and one rollout batch of the bench's shape
(16 prompts "a+b=" x G=8, completion lengths drawn like the bench's, mean ~42 of <= 64 tokens,
random tokens) or, with `--shape demo`, of `make demo`'s (32 prompts "max(a,b)=" of 11 tokens x G=8,
completions of 2-5 tokens, one micro-batch of 256), runs one warm-up `Learner.train_step`, then
profiles `--steps` more. Prints the
wall time and page faults per step and the top ops by self CPU time (`--shapes`: per input shape
and dtype). Extra arguments are grpo-train overrides
(e.g. train.autocast_dtype=bfloat16 train.pack_sequences=false train.compile=true) applied to the learner's config.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

G = 8
SHAPES = {  # prompts per step, longest completion, prompt lengths (low, high + 1)
    "bench": (16, 64, (5, 7)),
    "demo": (32, 8, (11, 12)),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=25, help="ops in the table")
    p.add_argument("--trace", type=Path, help="also write a Chrome trace here")
    p.add_argument("--glibc-default", action="store_true",
                   help="leave glibc's malloc as it is (the learner tunes it: grpo_cli/learner/host_memory.py), to compare")
    p.add_argument("--shapes", action="store_true", help="group the table by op and input shapes (and dtypes)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    B, MAX_NEW, prompt_lens = SHAPES[a.shape]

    from examples.demo.arithmetic import make_rows, write_jsonl
    from examples.demo.tiny import save_tiny
    from grpo_cli.config.validate import compose
    from grpo_cli.learner import host_memory
    from grpo_cli.learner.learner import Learner, RolloutBatch

    torch.set_num_threads(2)
    if a.glibc_default:
        host_memory.keep_freed_memory = lambda: False
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="profile-learner-"))
    model, data = save_tiny(tmp / "model"), write_jsonl(make_rows(100, seed=0), tmp / "train.jsonl")
    cfg = compose([
        "model=tiny-local", f"model.path={model}", "data=arithmetic", f"data.path={data}",
        "reward=arithmetic", "sampler=vllm-cpu", f"sampler.max_tokens={MAX_NEW}", "sampler.max_model_len=128",
        f"algo.group_size={G}", "algo.beta=0.04", f"train.prompts_per_step={B}",
        f"train.micro_batch_size={B * G}", "optim.lr=1e-4", "logger=none", *a.overrides,
    ])
    learner = Learner(cfg.model, cfg.algo, cfg.optim, cfg.train, cfg.sampler.temperature, cfg.seed, total_optim_steps=100)
    gen = torch.Generator().manual_seed(0)
    n = B * G
    if a.shape == "bench":  # like the bench's random model: EOS (1/128 per token) or the 64-token limit
        lengths = torch.distributions.Geometric(probs=torch.tensor(1 / 64)).sample((n,)).clamp(1, MAX_NEW).long() + 1
        lengths = lengths.clamp_max(MAX_NEW)
    else:  # the demo's warm-started model: two digits and EOS, sometimes more
        lengths = torch.randint(2, 6, (n,), generator=gen)
    groups = [torch.randint(3, 128, (int(torch.randint(*prompt_lens, (1,), generator=gen)),), generator=gen).tolist()
              for _ in range(B)]
    prompts = [pr for pr in groups for _ in range(G)]  # G completions of each prompt, as the loop has them
    comps = [torch.randint(3, 128, (int(t),), generator=gen).tolist() for t in lengths]
    logps = [[-4.8] * len(c) for c in comps]
    adv = torch.randn(n, generator=gen)
    batch = RolloutBatch.build(prompts, comps, logps, adv, pad_id=0)
    print(f"batch: {n} completions, mean length {lengths.float().mean():.1f}, max {int(lengths.max())}")

    t0 = time.perf_counter()
    learner.train_step(batch)  # warm-up
    print(f"warm-up step: {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=a.shapes) as prof:
        for _ in range(a.steps):
            learner.train_step(batch)
    print(f"learner step: {(time.perf_counter() - t0) / a.steps:.3f} s (under the profiler)")
    t0, faults0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(a.steps):
        learner.train_step(batch)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / a.steps
    print(f"learner step: {(time.perf_counter() - t0) / a.steps:.3f} s (no profiler), {faults:.0f} page faults")
    table = prof.key_averages(group_by_input_shape=a.shapes).table(
        sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=50, max_shapes_column_width=90)
    print(table)
    if a.trace:
        prof.export_chrome_trace(str(a.trace))


if __name__ == "__main__":
    main()
