"""The CPU benchmark of shared/BENCH.md: one GRPO step of grpo-cli against TRL's GRPOTrainer.

    .venv/bin/python scripts/bench_cpu.py [--steps 5] [--learner-dtype fp32|bf16] [--skip-trl] [--out F.json]

Workload "bench-cpu": the tiny random Qwen2 of `grpo_cli.tiny` (hidden 256, 4 layers, vocab 128),
prompts "a+b=" (a, b in 0..99), reward 1.0 when the completion starts with the sum; a step is
16 prompts x 8 completions, <= 64 new tokens, temperature 1, beta 0.04, epsilon 0.2, mu 1, AdamW
lr 1e-4. Each tool runs 1 warm-up + `--steps` timed steps in its own subprocess, one after the
other, once the cores are idle (and again if other jobs took them meanwhile; max 3 tries):
  - grpo-cli: the real CLI, `python -m grpo_cli ...` (vLLM CPU sampler + learner), read back from metrics.jsonl.
  - TRL 1.16 GRPOTrainer (extra `bench`), CPU, fp32, transformers' generate; a TrainerCallback times it.
Reported: median s/step, generated tokens/s (per step), peak RSS (the child's ru_maxrss); for
grpo-cli also the sample / score / learner / sync split, sampler tokens/s, log-prob drift and learner
MFU against this machine's matmul peak (2 threads). Headline: TRL s/step / grpo-cli s/step.
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
import timeit
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

B, G, MAX_NEW, BETA, EPS, LR, SEED, ROWS = 16, 8, 64, 0.04, 0.2, 1e-4, 0, 2000


def prepare(work: Path) -> tuple[Path, Path]:
    """The model directory and the prompt file both tools train on."""
    from grpo_cli.tasks.arithmetic import make_rows, write_jsonl
    from grpo_cli.tiny import save_tiny

    return save_tiny(work / "model"), write_jsonl(make_rows(ROWS, seed=SEED), work / "train.jsonl")


def cpu_seconds() -> float:
    """Busy CPU seconds of all cores since boot (/proc/stat: everything but idle and iowait)."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:8]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def wait_idle(max_wait: float, busy_max: float = 0.2) -> None:
    """Wait (at most max_wait s) until other jobs leave the cores (< busy_max of them busy over 2 s)."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        c0, _, c1 = cpu_seconds(), time.sleep(2), cpu_seconds()
        if (busy := (c1 - c0) / (2 * os.cpu_count())) <= busy_max:
            return
        print(f"  cores {busy:.0%} busy with other work: waiting 30 s", flush=True)
        time.sleep(30)


def measure(name: str, fn, max_wait: float) -> dict:
    """fn() once the cores are idle; again if other jobs took > 10 % of them meanwhile (until max_wait)."""
    deadline = time.monotonic() + max_wait
    while True:
        print(f"{name}: waiting for idle cores, then 1 warm-up + timed steps ...", flush=True)
        wait_idle(deadline - time.monotonic())
        peak = matmul_peak()  # the machine's speed drifts: probe it right before each tool
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


def bench_grpo_cli(model: Path, data: Path, work: Path, steps: int, dtype: str) -> dict:
    run_dir = work / "grpo-cli-run"
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl is appended to
    cmd = [
        sys.executable, "-m", "grpo_cli", "model=tiny-local", f"model.path={model}", "data=arithmetic",
        f"data.path={data}", "data.eval_holdout=0", "reward=arithmetic", "sampler=vllm-cpu",
        f"sampler.max_tokens={MAX_NEW}", "sampler.max_model_len=128", "sampler.temperature=1.0",
        f"algo.group_size={G}", f"algo.beta={BETA}", f"algo.epsilon={EPS}", "algo.num_iterations=1",
        f"train.prompts_per_step={B}", f"train.micro_batch_size={B * G}", f"train.max_steps={steps + 1}",
        "train.autocast_dtype=" + ("bfloat16" if dtype == "bf16" else "null"),
        f"optim.lr={LR}", "optim.optimizer.betas=[0.9,0.999]", "logger=none", "checkpoint.final=false",
        f"seed={SEED}", f"hydra.run.dir={run_dir}",
    ]
    rss, others = run_child(cmd, work / "grpo-cli.log")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "time/step_s" in r][1:]  # drop the warm-up step
    keys = [k for k in timed[0] if k.startswith(("time/", "tokens_per_s", "completion_len/mean", "logprob_drift"))]
    per_step = {k: [r[k] for r in timed] for k in keys}
    per_step["gen_tokens"] = [r["completion_len/mean"] * B * G for r in timed]
    return {"cmd": " ".join(cmd[1:]), "peak_rss_mib": rss, "others_cpu": others, "per_step": per_step}


def trl_child(model: Path, data: Path, steps: int, out: Path) -> None:
    """Runs inside the TRL subprocess: train steps + 1 steps, write per-step times to `out`."""
    import torch
    import trl.trainer.grpo_trainer as grpo_trainer
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from grpo_cli.rewards.arithmetic import exact_answer

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
        output_dir=str(out.parent / "trl-run"), use_cpu=True, bf16=False, fp16=False,
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


def bench_trl(model: Path, data: Path, work: Path, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--trl-child", str(work), "--steps", str(steps),
           "--model", str(model), "--data", str(data)]
    rss, others = run_child(cmd, work / "trl.log")
    return {"peak_rss_mib": rss, "others_cpu": others, "per_step": json.loads((work / "trl_result.json").read_text())}


def matmul_peak(reps: int = 5) -> dict[str, float]:
    """Best-of-`reps` GFLOP/s of x @ W.T (F.linear, the layout of nn.Linear) on 2 threads, per dtype.
    The size grows (256 .. 2048) until one product takes >= 0.1 s: without AVX-512 BF16 a bf16
    product is slow here (and a plain bf16 torch.mm, x @ W, ~10x slower still)."""
    import torch

    torch.set_num_threads(2)
    peak = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for n in (256, 512, 1024, 2048):
            a = torch.randn(n, n).to(dtype)
            best = min(timeit.repeat(lambda a=a: torch.nn.functional.linear(a, a), number=1, repeat=reps + 1))
            if best >= 0.1:
                break
        peak[name], peak[f"{name}_n"] = 2 * n**3 / best / 1e9, n
    return peak


def learner_flops(model: Path, data: Path) -> tuple[int, float]:
    """Matmul parameters used per token (every nn.Linear incl. the tied lm_head, V x H) and the
    mean prompt length in tokens of the data file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    n = sum(m.weight.numel() for m in lm.modules() if isinstance(m, torch.nn.Linear))
    tok = AutoTokenizer.from_pretrained(model)
    prompts = [json.loads(line)["prompt"] for line in data.read_text().splitlines()]
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    return n, statistics.fmean(len(x) for x in ids)


def summarise(res: dict, n_params: int, prompt_len: float, dtype: str) -> dict:
    s = res["per_step"]
    step_s = s.get("time/step_s") or s["step_s"]
    peak = res["matmul_peak_gflops"]
    out = {"s_per_step": statistics.median(step_s), "peak_rss_mib": res["peak_rss_mib"], "matmul_peak_gflops": peak,
           "others_cpu_share": res["others_cpu"], "median": {k: statistics.median(v) for k, v in s.items()},
           "gen_tokens_per_s": statistics.median(t / x for t, x in zip(s["gen_tokens"], step_s))}
    if "time/learner_s" in s:  # grpo-cli: learner MFU per step, then the median
        # Policy forward + backward (6 N) and reference forward (2 N) per real token, prompt + completion.
        flops = [(6 + 2) * n_params * B * G * (prompt_len + c) for c in s["completion_len/mean"]]
        out["learner_flops_per_step"] = statistics.median(flops)
        out["learner_mfu"] = statistics.median(
            f / t / (peak[dtype] * 1e9) for f, t in zip(flops, s["time/learner_s"]))
    return out


def report(cli: dict, trl: dict | None, n_params: int, prompt_len: float, dtype: str) -> None:
    from rich.console import Console
    from rich.table import Table

    m, peak = cli["median"], cli["matmul_peak_gflops"]
    table = Table(title=f"bench-cpu: {B} prompts x G={G}, <= {MAX_NEW} new tokens; median of timed steps")
    table.add_column("metric")
    table.add_column(f"grpo-cli (learner {dtype})", justify="right")
    table.add_column("TRL 1.16 (fp32)", justify="right")
    t = trl or {}
    tm = t.get("median", {})

    def row(name, a, b=None, fmt="{:.3f}"):
        table.add_row(name, fmt.format(a), "-" if b is None else fmt.format(b))

    row("s/step", cli["s_per_step"], t.get("s_per_step"))
    row("generated tokens/s (per step)", cli["gen_tokens_per_s"], t.get("gen_tokens_per_s"), "{:,.0f}")
    row("completion length (mean)", m["completion_len/mean"], tm.get("completion_len/mean"), "{:.1f}")
    row("peak RSS (MiB)", cli["peak_rss_mib"], t.get("peak_rss_mib"), "{:,.0f}")
    row("fp32 matmul GFLOP/s just before", peak["fp32"], trl and trl["matmul_peak_gflops"]["fp32"], "{:.0f}")
    row("  sample s (TRL: generate)", m["time/sample_s"], tm.get("generate_s"))
    row("  score s", m["time/reward_s"], fmt="{:.4f}")
    row("  learner s", m["time/learner_s"])
    row("  weight-sync s", m["time/sync_s"], fmt="{:.4f}")
    row("sampler tokens/s", m["tokens_per_s"], fmt="{:,.0f}")
    row(f"learner MFU (vs {dtype} matmul peak)", 100 * cli["learner_mfu"], fmt="{:.1f} %")
    row("other jobs' CPU share (> 10 %: skewed)", 100 * cli["others_cpu_share"], trl and 100 * trl["others_cpu_share"], "{:.0f} %")
    table.add_row("log-prob drift max / mean", f"{m['logprob_drift/max']:.1e} / {m['logprob_drift/mean']:.1e}", "-")
    Console().print(table)
    print(f"learner FLOPs/step = (6 x N + 2 x N) x {B * G} x (prompt {prompt_len:.2f} + completion mean) "
          f"tokens = {cli['learner_flops_per_step'] / 1e9:.1f} GFLOP (median), N = {n_params:,} matmul "
          "params/token (every nn.Linear incl. the tied lm_head, V x H; attention scores and padding not "
          "counted). MFU = FLOPs / time/learner_s / F.linear peak (2 threads) just before grpo-cli ran: "
          f"fp32 {peak['fp32']:.1f} GFLOP/s (n={peak['fp32_n']}), bf16 {peak['bf16']:.1f} GFLOP/s (n={peak['bf16_n']})")
    if trl:
        print(f"\nheadline: TRL s/step / grpo-cli s/step = {trl['s_per_step']:.2f} / "
              f"{cli['s_per_step']:.2f} = {trl['s_per_step'] / cli['s_per_step']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per tool (after 1 warm-up step)")
    p.add_argument("--learner-dtype", choices=["fp32", "bf16"], default="fp32",
                   help="grpo-cli learner matmuls: fp32, or bf16 autocast (train.autocast_dtype)")
    p.add_argument("--skip-trl", action="store_true", help="benchmark grpo-cli only")
    p.add_argument("--out", type=Path, help="also write every number as JSON here")
    p.add_argument("--workdir", type=Path, help="keep model, data, run dirs and logs here (default: a temp dir)")
    p.add_argument("--max-wait", type=float, default=900,
                   help="per tool, seconds to wait for a quiet machine (idle before, no other jobs during)")
    for internal in ("--trl-child", "--model", "--data"):  # the TRL subprocess's arguments
        p.add_argument(internal, type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.steps < 1:
        p.error("--steps must be >= 1")
    if a.trl_child:
        return trl_child(a.model, a.data, a.steps, a.trl_child / "trl_result.json")

    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, data = prepare(work)
        n_params, prompt_len = learner_flops(model, data)
        cli_raw = measure("grpo-cli", lambda: bench_grpo_cli(model, data, work, a.steps, a.learner_dtype), a.max_wait)
        trl_raw = None if a.skip_trl else measure("TRL", lambda: bench_trl(model, data, work, a.steps), a.max_wait)

    cli = summarise(cli_raw, n_params, prompt_len, a.learner_dtype)
    trl = summarise(trl_raw, n_params, prompt_len, "fp32") if trl_raw else None
    report(cli, trl, n_params, prompt_len, a.learner_dtype)
    if a.out:
        result = {
            "workload": {"prompts": B, "group_size": G, "max_new_tokens": MAX_NEW, "beta": BETA,
                         "epsilon": EPS, "lr": LR, "timed_steps": a.steps, "learner_dtype": a.learner_dtype},
            "matmul_params_per_token": n_params, "prompt_len_mean": prompt_len,
            "grpo_cli": cli | {"per_step": cli_raw["per_step"], "cmd": cli_raw["cmd"]},
            "trl": trl | {"per_step": trl_raw["per_step"]} if trl else None,
            "trl_over_grpo_cli": trl["s_per_step"] / cli["s_per_step"] if trl else None,
        }
        a.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
