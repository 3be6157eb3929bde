"""The GPU check any task with a GPU runs: the gsm8k recipe on a model of a real model's shape.

    python scripts/gpu_check.py                      # Qwen2.5-0.5B shape, 4 steps, then `pytest -m gpu`
    python scripts/gpu_check.py --shape 1.5b --skip-tests
    python scripts/gpu_check.py --shape tiny --device cpu --steps 2 --skip-tests   # the CPU smoke test
    python scripts/gpu_check.py --skip-tests train.strategy=fsdp2   # the learner sharded (world of one):
                                                  # compare its step split and peak memory with ddp's

No hub: it builds a randomly initialised Qwen2 of the chosen shape (vocab 151,936, every id decodable)
and a GSM8K-schema data file locally, then runs `grpo-train +recipe=gsm8k` in this process for a few
steps. It prints the step split, sampler tokens/s in the loop vs the same engine alone, weight-sync
seconds, learner MFU vs the device's measured matmul peak, peak GPU memory and the sampler/learner
log-prob drift (bf16 sampler vs fp32 learner). A random model never stops early, so every
completion runs to `sampler.max_tokens`: the worst case for memory. Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("WANDB_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Qwen2.5 shapes (config.json of the hub checkpoints); `tiny` for the CPU smoke test.
SHAPES = {
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                 num_kv_heads=2, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6),
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                 num_kv_heads=2, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6),
    "tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1),
}


def build_model(shape: str, work: Path) -> Path:
    from grpo_cli.tiny import save_tiny

    out = work / f"qwen2.5-{shape}-shape"
    if not (out / "config.json").exists():
        print(f"building a random Qwen2 of the {shape} shape in {out} ...", flush=True)
        save_tiny(out, **SHAPES[shape])
    return out


def write_gsm8k(work: Path, rows: int = 512) -> tuple[Path, Path]:
    """Short word problems in openai/gsm8k's schema (`question`, `answer` ending in `#### N`)."""
    rng = random.Random(0)
    items = []
    for _ in range(rows):
        a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
        items.append({"question": f"Ann has {a} apples and buys {c} bags of {b}. How many apples has she now?",
                      "answer": f"She buys {c}*{b}={c * b}. {a}+{c * b}={a + c * b}.\n#### {a + c * b}"})
    paths = work / "gsm8k_train.jsonl", work / "gsm8k_test.jsonl"
    for path, part in zip(paths, (items[64:], items[:64])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def matmul_peak(device: str, dtype) -> float:
    """Best GFLOP/s of x @ W.T (nn.Linear's layout) on this device."""
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(6):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10 if device == "cuda" else 1):
            torch.nn.functional.linear(a, a)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / (10 if device == "cuda" else 1))
    return 2 * n**3 / best / 1e9


def overrides(a, model: Path, data: tuple[Path, Path], run_dir: Path) -> list[str]:
    out = ["+recipe=gsm8k", f"model.path={model}", f"data.path={data[0]}", f"data.eval_path={data[1]}",
           f"train.max_steps={a.steps}", f"train.device={a.device}", "logger=none", "eval.max_rows=16",
           "eval.max_tokens=16", "checkpoint.final=false", "checkpoint.every=0", "optim.warmup_steps=0",
           f"hydra.run.dir={run_dir}"]
    if a.device == "cpu":  # the smoke test: vLLM's CPU engine, fp32, short completions
        out += ["sampler=vllm-cpu", "sampler.dtype=float32", "train.autocast_dtype=null", "sampler.max_tokens=32",
                "sampler.max_model_len=256", "train.prompts_per_step=4", "train.micro_batch_size=8"]
    return out + a.override


def matmul_params(model_dir: Path) -> int:
    """Weights a token multiplies through: every nn.Linear, the lm_head (V x H) included."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--work", type=Path, default=REPO / ".cache" / "gpu_check")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument("--skip-tests", action="store_true", help="do not run `pytest -m gpu` afterwards")
    p.add_argument("override", nargs="*", help="extra grpo-train overrides, e.g. sampler.sleep_level=1")
    a = p.parse_args()

    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (for the CPU smoke test: --shape tiny --device cpu)", file=sys.stderr)
        return 2
    a.work.mkdir(parents=True, exist_ok=True)
    model, data = build_model(a.shape, a.work), write_gsm8k(a.work)
    run_dir = a.work / "runs" / time.strftime("%Y%m%d-%H%M%S")

    from grpo_cli.config import compose
    from grpo_cli.data import PromptFormatter, as_batch, load_table
    from grpo_cli.models import load_tokenizer
    from grpo_cli.sampler import VLLMSampler
    from grpo_cli.train import run

    cfg = compose(overrides(a, model, data, run_dir))
    dtype = torch.bfloat16 if cfg.train.autocast_dtype == "bfloat16" or cfg.model.dtype == "bfloat16" else torch.float32
    peak = matmul_peak(a.device, dtype)
    print(f"{a.device} {str(dtype).removeprefix('torch.')} matmul peak: {peak:,.0f} GFLOP/s", flush=True)

    # The engine alone on one step's rollout (same prompts, G and settings): the sampler's roofline.
    sampler = VLLMSampler(cfg.sampler, cfg.model)  # the run below reuses this very engine
    fmt = PromptFormatter(cfg.data, load_tokenizer(cfg.model))
    B, G = cfg.train.prompts_per_step, cfg.algo.group_size
    ids = fmt.encode(as_batch(load_table(str(data[0])).select(range(B)), fmt).prompts)
    sampler.generate(ids[:2], n=2)  # warm-up
    t0 = time.perf_counter()
    alone = sampler.generate(ids, n=G)
    standalone_tps = alone.num_tokens / (time.perf_counter() - t0)

    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    failures = []
    try:
        run(cfg, run_dir=run_dir)
    except Exception as err:  # report it, and still print what was measured
        failures.append(f"the run raised {type(err).__name__}: {err}")
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()] if (run_dir / "metrics.jsonl").exists() else []
    steps = [m for m in lines if "time/step_s" in m]
    timed = steps[1:] or steps  # the first step pays for warm-up
    if len(steps) < a.steps:
        failures.append(f"{len(steps)} of {a.steps} steps logged")
    med = {k: statistics.median(m[k] for m in timed) for k in timed[0]} if timed else {}
    if any(isinstance(v, float) and not math.isfinite(v) for m in steps for v in m.values()):
        failures.append("a metric is NaN or infinite")

    result = {"shape": a.shape, "device": a.device, "strategy": cfg.train.strategy, "matmul_peak_gflops": peak, "standalone_tokens_per_s": standalone_tps,
              "steps": steps}
    if med:
        tokens = sum(len(x) for x in ids) / B + med["completion_len/mean"]  # per sequence
        passes = 6 + (2 if cfg.algo.beta > 0 else 0) + (2 if cfg.algo.num_iterations > 1 else 0)
        flops = passes * matmul_params(model) * B * G * tokens
        result |= {"median": med, "learner_tflop": flops / 1e12,
                   "learner_mfu": flops / med["time/learner_s"] / (peak * 1e9),
                   "in_loop_over_standalone": med["tokens_per_s"] / standalone_tps}
        if a.device == "cuda":
            free, total = torch.cuda.mem_get_info()
            result |= {"peak_torch_gib": torch.cuda.max_memory_allocated() / 2**30, "device_used_gib": (total - free) / 2**30}
        report(result)
    if not a.skip_tests:
        code = subprocess.call([sys.executable, "-m", "pytest", "-m", "gpu", "-q"], cwd=REPO)
        if code != 0:
            failures.append(f"`pytest -m gpu` exited {code}")
    if a.out:
        a.out.write_text(json.dumps(result | {"failures": failures}, indent=1))
    for f in failures:
        print(f"gpu_check: FAILED: {f}", file=sys.stderr)
    print("gpu_check: " + ("FAILED" if failures else "ok"), flush=True)
    return 1 if failures else 0


def report(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = r["median"]
    t = Table(title=f"gpu_check: gsm8k recipe, Qwen2.5-{r['shape']} shape on {r['device']}, train.strategy="
                    f"{r['strategy']} (median of timed steps)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [
        ("step s", f"{m['time/step_s']:.2f}"),
        ("  sample s", f"{m['time/sample_s']:.2f}"),
        ("  reward s", f"{m['time/reward_s']:.3f}"),
        ("  learner s", f"{m['time/learner_s']:.2f}"),
        ("  weight-sync s", f"{m['time/sync_s']:.3f}"),
        ("sampler tokens/s in the loop", f"{m['tokens_per_s']:,.0f}"),
        ("sampler tokens/s alone (same engine, same rollout)", f"{r['standalone_tokens_per_s']:,.0f}"),
        ("in-loop / alone", f"{r['in_loop_over_standalone']:.2f}"),
        ("completion length (mean)", f"{m['completion_len/mean']:.0f}"),
        ("learner TFLOP per step", f"{r['learner_tflop']:.1f}"),
        ("learner MFU (vs measured matmul peak)", f"{100 * r['learner_mfu']:.1f} % of {r['matmul_peak_gflops']:,.0f} GFLOP/s"),
        ("log-prob drift sampler vs learner, max / mean", f"{m['logprob_drift/max']:.2e} / {m['logprob_drift/mean']:.2e}"),
    ]
    if "peak_torch_gib" in r:
        rows += [("peak torch-allocated GiB (learner + engine)", f"{r['peak_torch_gib']:.1f}"),
                 ("device memory in use at the end, GiB", f"{r['device_used_gib']:.1f}")]
    for row in rows:
        t.add_row(*row)
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
