"""The GPU checklist any task with a GPU runs first: every item only a GPU shows, one command.

    python scripts/gpu_check.py                       # the whole checklist on the GPUs here (docs/gpu.md)
    python scripts/gpu_check.py --device cpu --smoke  # what of it runs on a CPU (make test runs this)
    python scripts/gpu_check.py --only colocated-sleep0 torchrun2-ddp
    python scripts/gpu_check.py --single --shape 1.5b train.strategy=fsdp2   # one measured recipe run

Each item runs in its own subprocess with a timeout; the results go to one JSON (--out, default
WORK/checklist.json) and a printed table (pass / fail / skipped and why, seconds, key numbers). Exits
non-zero when an item fails. Items: the gsm8k recipe colocated on one GPU with sampler.sleep_level
0, 1 and 2; torchrun on 2 GPUs with train.strategy=ddp and fsdp2; the server sampler on its own GPU
with NCCL weight sync (sampler=vllm-server sampler.devices=1); a resume with fewer visible GPUs than
at the save (CUDA_VISIBLE_DEVICES); `pytest -m gpu`. Items that need 2 GPUs are skipped with one.

`--single` is one measured run: the gsm8k recipe on a model of a real model's shape, in this process.
No hub: it builds a randomly initialised Qwen2 of the chosen shape (vocab 151,936, every id
decodable) and a GSM8K-schema data file locally. It prints the step split, sampler tokens/s in the
loop vs the same engine alone, weight-sync seconds, learner MFU vs the device's measured matmul peak
(an MFU over 100 % is reported as a measurement error), peak GPU memory and the sampler/learner
log-prob drift. A random model never stops early, so every completion runs to `sampler.max_tokens`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("WANDB_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from mfu import learner_flops, linear_params, matmul_peak, mfu  # noqa: E402  (scripts/mfu.py)

# Qwen2.5 shapes (config.json of the hub checkpoints); `tiny` for the CPU smoke test.
SHAPES = {
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                 num_kv_heads=2, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6),
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                 num_kv_heads=2, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6),
    "tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1),
}


def build_model(shape: str, work: Path) -> Path:
    from examples.demo.tiny import save_tiny

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


def overrides(a, model: Path, data: tuple[Path, Path], run_dir: Path, **replace) -> list[str]:
    """grpo-train overrides of a short gsm8k-recipe run; `replace` sets or replaces keys (key=value)."""
    kv = {"model.path": model, "data.path": data[0], "data.eval_path": data[1], "train.max_steps": a.steps,
          "train.device": a.device, "logger": "none", "eval.max_rows": 16, "eval.max_tokens": 16,
          "checkpoint.final": "false", "checkpoint.every": 0, "optim.warmup_steps": 0, "hydra.run.dir": run_dir}
    if a.device == "cpu":  # the smoke test: vLLM's CPU engine, fp32, short completions
        kv |= {"sampler": "vllm-cpu", "sampler.dtype": "float32", "train.autocast_dtype": "null",
               "sampler.max_tokens": 32, "sampler.max_model_len": 256, "train.prompts_per_step": 4,
               "train.micro_batch_size": 8, "algo.is_correction._target_": "grpo_cli.algo.correction.NoCorrection"}
    kv |= {k.replace("__", "."): v for k, v in replace.items()}
    return ["+recipe=gsm8k"] + [f"{k}={v}" for k, v in kv.items()] + list(a.override)


def matmul_params(model_dir: Path) -> tuple[int, int]:
    """(backbone nn.Linear weights, lm_head's V x H) of the model: what a token multiplies through."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return linear_params(model)


def single(a) -> int:
    """One measured run of the gsm8k recipe in this process (the checklist's recipe items)."""
    import torch

    a.work.mkdir(parents=True, exist_ok=True)
    model, data = build_model(a.shape, a.work), write_gsm8k(a.work)
    run_dir = a.work / "runs" / time.strftime("%Y%m%d-%H%M%S")

    from grpo_cli.config.validate import compose
    from grpo_cli.learner.models import load_tokenizer
    from grpo_cli.rollout.colocated import ColocatedSampler
    from grpo_cli.rollout.prompts import PromptFormatter, as_batch, load_table
    from grpo_cli.train import run

    cfg = compose(overrides(a, model, data, run_dir))
    dtype = torch.bfloat16 if cfg.train.autocast_dtype == "bfloat16" or cfg.model.dtype == "bfloat16" else torch.float32
    probe = matmul_peak(dtype, a.device)  # idle cores, best of several rounds and sizes (scripts/mfu.py)
    peak = probe["gflops"]
    print(f"{a.device} {str(dtype).removeprefix('torch.')} matmul peak: {peak:,.0f} GFLOP/s (n={probe['n']}, "
          f"cores {probe['busy']:.0%} busy before)", flush=True)

    # The engine alone on one step's rollout (same prompts, G and settings): the sampler's roofline.
    sampler = ColocatedSampler(cfg.sampler, cfg.model)  # the run below reuses this very engine
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
        # The FLOPs the update needs: each prompt once per group through the backbone, every completion
        # token but the last; lm_head at the positions predicting a completion token (scripts/mfu.py).
        prompt, comp = sum(len(x) for x in ids) / B, med["completion_len/mean"]
        passes = 6 + (2 if cfg.algo.beta > 0 else 0) + (2 if cfg.algo.num_iterations > 1 else 0)
        flops = learner_flops(*matmul_params(model), B * prompt + B * G * (comp - 1), B * G * comp, passes)
        value, error = mfu(flops, med["time/learner_s"], peak)
        result |= {"median": med, "learner_tflop": flops / 1e12, "learner_mfu": value,
                   "in_loop_over_standalone": med["tokens_per_s"] / standalone_tps, "matmul_peak": probe}
        if error:
            result["learner_mfu_error"] = error
            print(f"gpu_check: learner {error}", file=sys.stderr)
        if a.device == "cuda":
            free, total = torch.cuda.mem_get_info()
            result |= {"peak_torch_gib": torch.cuda.max_memory_allocated() / 2**30, "device_used_gib": (total - free) / 2**30}
        report(result)
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
        ("learner MFU (vs measured matmul peak)", r.get("learner_mfu_error") or
         f"{100 * r['learner_mfu']:.1f} % of {r['matmul_peak_gflops']:,.0f} GFLOP/s"),
        ("log-prob drift sampler vs learner, max / mean", f"{m['logprob_drift/max']:.2e} / {m['logprob_drift/mean']:.2e}"),
    ]
    if "peak_torch_gib" in r:
        rows += [("peak torch-allocated GiB (learner + engine)", f"{r['peak_torch_gib']:.1f}"),
                 ("device memory in use at the end, GiB", f"{r['device_used_gib']:.1f}")]
    for row in rows:
        t.add_row(*row)
    Console().print(t)


# --- the checklist ---------------------------------------------------------------------------------

@dataclass
class Item:
    name: str
    what: str
    needs_gpus: int  # 0: runs on the CPU too (smoke mode)
    steps: list[tuple[list[str], dict]]  # (argv, extra environment), run in order; all must exit 0
    timeout_s: int
    check: Callable[[Path], dict] = lambda run_dir: {}  # noqa: E731  key numbers from the run dir; raises on failure


def _steps_logged(run_dir: Path, want: int) -> dict:
    path = run_dir / "metrics.jsonl"
    steps = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    steps = [m for m in steps if "time/step_s" in m]
    if len(steps) != want:
        raise AssertionError(f"{len(steps)} steps logged in {path}, want {want}")
    last = steps[-1]
    return {"steps": len(steps), "step_s": round(last["time/step_s"], 2),
            "drift_max": f"{last.get('logprob_drift/max', float('nan')):.1e}"}


def items(a, model: Path, data: tuple[Path, Path], gpus: int) -> list[Item]:
    py, work = sys.executable, a.work / "checklist"
    grpo = [py, "-m", "grpo_cli"]
    me = [py, str(Path(__file__).resolve()), "--single", "--shape", a.shape, "--device", a.device, "--work", str(a.work),
          "--steps", str(a.steps), *a.override]
    run = lambda name, **kv: overrides(a, model, data, work / name, **kv)  # noqa: E731
    out: list[Item] = []
    for level in (0, 1, 2):
        name = f"colocated-sleep{level}"
        out.append(Item(name, f"gsm8k recipe, vLLM colocated on 1 GPU, sampler.sleep_level={level}", 0 if level == 0 else 1,
                        [(me + ["--out", str(work / f"{name}.json"), f"sampler.sleep_level={level}"], {})], a.timeout,
                        lambda _, n=name: _single_numbers(work / f"{n}.json")))
    for strategy in ("ddp", "fsdp2"):
        name = f"torchrun2-{strategy}"
        out.append(Item(name, f"2 ranks (train.nproc=2), train.strategy={strategy}, a vLLM engine per rank", 2,
                        [(grpo + run(name, train__nproc=2, train__strategy=strategy), {})], a.timeout,
                        lambda d, n=name: _steps_logged(work / n, a.steps)))
    out.append(Item("server-nccl", "sampler=vllm-server on GPU 1, learner on GPU 0, NCCL weight sync", 2,
                    [(grpo + run("server-nccl", sampler="vllm-server", sampler__devices=1, train__device="cuda:0"), {})],
                    a.timeout, lambda d: _steps_logged(work / "server-nccl", a.steps)))
    # Saved with 2 GPUs visible and the learner on the second; resumed with only that GPU visible (its cuda:0).
    two, one = ({"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "1"}) if a.device == "cuda" else ({}, {})
    first = run("resume-fewer-gpus", checkpoint__every=1, train__device="cuda:1" if a.device == "cuda" else "cpu")
    again = run("resume-fewer-gpus", train__max_steps=a.steps + 1, train__device=a.device) + [
        f"resume={work / 'resume-fewer-gpus'}"]
    # Only a GPU shows this one (on the CPU, kill-and-resume is tests/test_resume.py's).
    out.append(Item("resume-fewer-gpus", "checkpoint with 2 GPUs visible (learner cuda:1), resume with 1 (CUDA_VISIBLE_DEVICES=1)",
                    2, [(grpo + first, two), (grpo + again, one)], a.timeout,
                    lambda d: _steps_logged(work / "resume-fewer-gpus", a.steps + 1)))
    out.append(Item("pytest-gpu", "pytest -m gpu (the suite's CUDA tests)", 1,
                    [([py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], {})], a.timeout))
    return out


def _single_numbers(path: Path) -> dict:
    r = json.loads(path.read_text())
    if r.get("failures"):
        raise AssertionError("; ".join(r["failures"]))
    m = r.get("median", {})
    return {k: v for k, v in {
        "step_s": m.get("time/step_s"), "sample_s": m.get("time/sample_s"), "learner_s": m.get("time/learner_s"),
        "sync_s": m.get("time/sync_s"), "mfu": r.get("learner_mfu_error") or r.get("learner_mfu"),
        "drift_max": m.get("logprob_drift/max"), "peak_gib": r.get("peak_torch_gib")}.items() if v is not None}


def run_item(item: Item, gpus: int, smoke: bool) -> dict:
    if smoke and item.needs_gpus:
        return {"status": "skipped", "why": "CPU smoke mode: needs a GPU"}
    if gpus < item.needs_gpus:
        return {"status": "skipped", "why": f"needs {item.needs_gpus} GPUs, {gpus} visible"}
    t0 = time.perf_counter()
    for argv, env in item.steps:
        try:
            done = subprocess.run(argv, cwd=REPO, env=os.environ | env, capture_output=True, text=True,
                                  timeout=item.timeout_s)
        except subprocess.TimeoutExpired:
            return {"status": "fail", "why": f"timed out after {item.timeout_s} s", "s": time.perf_counter() - t0}
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return {"status": "fail", "why": f"exit {done.returncode}: {tail[0][:200]}", "s": time.perf_counter() - t0,
                    "log_tail": (done.stdout + done.stderr)[-4000:]}
    try:
        numbers = item.check(Path())
    except Exception as err:  # the run exited 0 but did not do what it should
        return {"status": "fail", "why": f"{type(err).__name__}: {err}", "s": time.perf_counter() - t0}
    return {"status": "pass", "s": time.perf_counter() - t0, "numbers": numbers}


def checklist(a) -> int:
    import torch

    gpus = torch.cuda.device_count() if a.device == "cuda" else 0
    if a.device == "cuda" and not gpus:
        print("gpu_check: no CUDA device here (the CPU subset: --device cpu --smoke)", file=sys.stderr)
        return 2
    a.work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(a.work / "checklist", ignore_errors=True)  # each item starts from no run dir
    (a.work / "checklist").mkdir()
    model, data = build_model(a.shape, a.work), write_gsm8k(a.work)
    results = {}
    for item in items(a, model, data, gpus):
        if a.only and item.name not in a.only:
            continue
        print(f"gpu_check: {item.name} ...", flush=True)
        results[item.name] = {"what": item.what} | run_item(item, gpus, a.smoke)
        print(f"gpu_check: {item.name}: {results[item.name]['status']}", flush=True)
    out = a.out or a.work / "checklist.json"
    env = {"device": a.device, "gpus": gpus, "shape": a.shape, "steps": a.steps, "smoke": a.smoke,
           "gpu_names": [torch.cuda.get_device_name(i) for i in range(gpus)], "torch": torch.__version__}
    out.write_text(json.dumps({"env": env, "items": results}, indent=1, default=str))
    table(results, env)
    failed = [n for n, r in results.items() if r["status"] == "fail"]
    print(f"gpu_check: results in {out}; " + (f"FAILED: {', '.join(failed)}" if failed else "ok"), flush=True)
    return 1 if failed else 0


def table(results: dict, env: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"gpu_check on {env['device']} ({env['gpus']} GPU(s) {', '.join(env['gpu_names'])}), "
                    f"Qwen2.5-{env['shape']} shape, {env['steps']} steps")
    for col in ("item", "status", "s", "key numbers / why"):
        t.add_column(col)
    for name, r in results.items():
        detail = r.get("why") or ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in r.get("numbers", {}).items())
        t.add_row(name, r["status"], f"{r['s']:.0f}" if "s" in r else "", detail)
    Console(width=160).print(t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--smoke", action="store_true", help="the CPU subset, tiny model, 2 steps (make test runs it)")
    p.add_argument("--single", action="store_true", help="one measured recipe run in this process, not the checklist")
    p.add_argument("--only", nargs="+", help="run only these checklist items")
    p.add_argument("--shape", choices=sorted(SHAPES), help="model shape (default 0.5b; tiny with --smoke)")
    p.add_argument("--steps", type=int, help="steps per run (default 4; 2 with --smoke)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per checklist item")
    p.add_argument("--work", type=Path, default=REPO / ".cache" / "gpu_check")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--skip-tests", action="store_true", help=argparse.SUPPRESS)  # older spelling; --single never runs pytest
    p.add_argument("override", nargs="*", help="extra grpo-train overrides, e.g. sampler.sleep_level=1")
    a = p.parse_args()
    a.shape = a.shape or ("tiny" if a.smoke or a.device == "cpu" else "0.5b")
    a.steps = a.steps or (2 if a.smoke else 4)
    if a.single:
        import torch

        if a.device == "cuda" and not torch.cuda.is_available():
            print("gpu_check: no CUDA device here (the CPU subset: --device cpu --smoke)", file=sys.stderr)
            return 2
        return single(a)
    return checklist(a)


if __name__ == "__main__":
    sys.exit(main())
