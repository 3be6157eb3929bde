"""Where a learner step of the bench-cpu workload spends its time (torch.profiler, CPU).

    .venv/bin/python scripts/profile_learner.py [--shape bench|demo|0.5b] [--steps 3] [--rows 25] [--shapes]
        [--phases] [--model DIR] [--glibc-default] [KEY=VALUE ...]

Builds the bench model (examples.demo.tiny, random init) and one rollout batch of the bench's shape
(16 prompts "a+b=" x G=8, completion lengths drawn like the bench's, mean ~42 of <= 64 tokens,
random tokens) or, with `--shape demo`, of `make demo`'s (32 prompts "max(a,b)=" of 11 tokens x G=8,
completions of 2-5 tokens, one micro-batch of 256) or, with `--shape 0.5b`, of `bench_cpu.py --shape
0.5b`'s (a random Qwen2.5-0.5B-shaped model, 2 prompts "a+b=" x G=4, 32-token completions; `--model`
reuses one already built), runs one warm-up `Learner.train_step`, then profiles `--steps` more.
`--phases` also times the parts of a step one by one: reference forward, policy forward and
backward, the chunked lm_head + log-softmax alone, gradient clipping + AdamW. `--engine` then starts
the vLLM CPU engine in the same process and times its prefill (1 new token), a whole rollout and a
weight reload from the learner. The process's RSS is printed after each stage (where memory goes). Prints the
wall time and page faults per step and the top ops by self CPU time (`--shapes`: per input shape
and dtype). Extra arguments are grpo-train overrides
(e.g. train.autocast_dtype=bfloat16 train.pack_sequences=false train.compile=true) applied to the learner's config.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {  # prompts per step, G, longest completion, prompt lengths (low, high + 1)
    "bench": (16, 8, 64, (5, 7)),
    "demo": (32, 8, 8, (11, 12)),
    "0.5b": (2, 4, 32, (5, 7)),
}


def rss(stage: str) -> None:
    """The process's resident and peak resident memory now, in MiB (/proc/self/status)."""
    kib = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
           if line.startswith(("VmRSS", "VmHWM"))}
    print(f"RSS after {stage}: {kib['VmRSS'] / 1024:,.0f} MiB (peak so far {kib['VmHWM'] / 1024:,.0f})", flush=True)


def engine_times(cfg, learner, prompts: list[list[int]], g: int, steps: int) -> None:
    """The colocated vLLM engine in this process: prefill, a rollout, a weight reload (median seconds)."""
    import statistics

    from grpo_cli.rollout.colocated import ColocatedSampler

    t0 = time.perf_counter()
    sampler = ColocatedSampler(cfg.sampler, cfg.model)
    print(f"engine start: {time.perf_counter() - t0:.1f} s", flush=True)
    rss("the engine started")
    sampler.generate(prompts, n=g)  # warm-up
    times = {"prefill (1 new token)": [], f"rollout ({cfg.sampler.max_tokens} new tokens)": [], "weight reload": []}
    for _ in range(steps):
        for name, fn in ((next(iter(times)), lambda: sampler.generate(prompts, n=g, max_tokens=1)),
                         (list(times)[1], lambda: sampler.generate(prompts, n=g)),
                         ("weight reload", lambda: sampler.load_weights(learner.weights()))):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, v in times.items():
        print(f"  engine {name:<53} {statistics.median(v):8.3f} s", flush=True)
    rss("weight reloads")


def phases(learner, batch, steps: int) -> dict[str, float]:
    """Median seconds of each part of a learner step, timed alone (one micro-batch of the whole batch)."""
    import statistics
    from collections import defaultdict

    from grpo_cli.learner.logprobs import token_logprobs

    batch = batch.to(learner.device)
    mb = batch.select(torch.arange(len(batch)))
    lm_head = learner.policy.get_output_embeddings()
    m = int(mb.completion_lens.sum())
    hidden = torch.randn(m, lm_head.weight.shape[1], requires_grad=True)  # [M, H]
    targets = torch.randint(0, lm_head.weight.shape[0], (m,))  # [M]
    times = defaultdict(list)

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        times[name].append(time.perf_counter() - t0)
        return out

    for _ in range(steps):
        if learner.ref is not None:
            timed("reference forward (no grad)", lambda: learner._frozen_logprobs(learner.ref, batch))
        logp, _ = timed("policy forward", lambda: learner.completion_logprobs(learner.policy, mb, entropy=True))
        timed("policy backward", logp.sum().backward)
        timed("clip + AdamW step + zero_grad", learner._optimizer_step)
        lp, _ = timed("  of which lm_head + log-softmax forward (chunked, alone)",
                      lambda: token_logprobs(hidden, lm_head, targets, learner.temperature,
                                             learner.train.logprob_chunk_mib))
        timed("  of which lm_head + log-softmax backward (chunked, alone)", lp.sum().backward)
        timed("  the same forward without the entropy (alone)", lambda: token_logprobs(
            hidden.detach(), lm_head, targets, learner.temperature, learner.train.logprob_chunk_mib, with_entropy=False))
        learner.optimizer.zero_grad(set_to_none=True)
        hidden.grad = None
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=25, help="ops in the table")
    p.add_argument("--trace", type=Path, help="also write a Chrome trace here")
    p.add_argument("--glibc-default", action="store_true",
                   help="leave glibc's malloc as it is (the learner tunes it: grpo_cli/learner/host_memory.py), to compare")
    p.add_argument("--shapes", action="store_true", help="group the table by op and input shapes (and dtypes)")
    p.add_argument("--phases", action="store_true", help="also time the parts of a step one by one")
    p.add_argument("--engine", action="store_true", help="also time the vLLM engine's prefill, rollout and weight reload")
    p.add_argument("--model", type=Path, help="a model directory of the shape, built before (e.g. by bench_cpu.py --workdir)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    B, G, MAX_NEW, prompt_lens = SHAPES[a.shape]

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
    data = write_jsonl(make_rows(100, seed=0), tmp / "train.jsonl")
    if a.model:
        model = a.model
    elif a.shape == "0.5b":
        sys.path.insert(0, str(Path(__file__).parent))
        from gpu_check import SHAPES as MODEL_SHAPES

        model = save_tiny(tmp / "model", **MODEL_SHAPES["0.5b"])
    else:
        model = save_tiny(tmp / "model")
    cfg = compose([
        "model=tiny-local", f"model.path={model}", "data=arithmetic", f"data.path={data}",
        "reward=arithmetic", "sampler=vllm-cpu", f"sampler.max_tokens={MAX_NEW}", "sampler.max_model_len=128",
        f"algo.group_size={G}", "algo.beta=0.04", f"train.prompts_per_step={B}",
        f"train.micro_batch_size={B * G}", "optim.lr=1e-4", "logger=none", *a.overrides,
    ])
    rss("start-up")
    learner = Learner(cfg.model, cfg.algo, cfg.optim, cfg.train, cfg.sampler.temperature, cfg.seed, total_optim_steps=100)
    rss("the learner loaded (policy, reference)")
    gen = torch.Generator().manual_seed(0)
    n = B * G
    if a.shape == "0.5b":  # a random model of Qwen's vocab never stops early
        lengths = torch.full((n,), MAX_NEW)
    elif a.shape == "bench":  # like the bench's random model: EOS (1/128 per token) or the 64-token limit
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
    rss("a learner step (+ gradients, AdamW state, activations)")
    if a.phases:
        for name, seconds in phases(learner, batch, a.steps).items():
            print(f"  {name:<60} {seconds:8.3f} s")
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
    del prof
    if a.engine:
        engine_times(cfg, learner, groups, G, a.steps)


if __name__ == "__main__":
    main()
