"""Sampler/learner log-prob drift: a vLLM engine in bf16 (as the GPU recipes sample) against the fp32
learner, on the same sampled tokens; the fp32 engine as the control.

    python scripts/drift_bf16.py                         # bench-cpu shape, random weights
    python scripts/drift_bf16.py --sharpen 8 --max-tokens 256   # peakier distributions, longer sequences

For every sampled token: d = log pi_sampler - log pi_learner (fp32 transformers forward, temperature
1). Prints mean |d|, max |d| and, per importance-sampling scheme (grpo_cli/algo/correction.py), the share of
tokens or sequences whose ratio pi_learner / pi_sampler leaves [1/C, C]: what TRL's default
sequence_mask (C=3) would drop and what token-level truncation (C=2) would cap. A random model's
distributions are near uniform; `--sharpen K` multiplies the final norm's weight by K (logits x K), a
crude stand-in for a trained model's confident tokens. Runs on vLLM's CPU engine here; on a GPU with
`--device cuda`, CUDA's bf16 kernels.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {  # docs/benchmarks.md's bench-cpu model, and a smaller one
    "bench": dict(hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4, num_kv_heads=2),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1),
}


def build(work: Path, shape: str, sharpen: float) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from examples.demo.tiny import save_tiny

    out = save_tiny(work / f"{shape}-x{sharpen:g}", seed=0, **SHAPES[shape])
    if sharpen != 1:
        model = AutoModelForCausalLM.from_pretrained(out)
        with torch.no_grad():
            model.model.norm.weight.mul_(sharpen)
        model.save_pretrained(out)
    return out


def learner_logp(model_dir: Path, rollouts, device: str) -> list[list[float]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    out = []
    with torch.no_grad():
        for p, c in zip(rollouts.prompt_ids, rollouts.completion_ids):
            ids = torch.tensor([p + c], device=device)  # [1, P + T]
            logits = model(ids).logits[0, len(p) - 1 : -1].float()  # [T, V] predicting the completion
            out.append(logits.log_softmax(-1).gather(-1, ids[0, len(p):, None])[:, 0].tolist())
    return out


def drift(sampler_lp: list[list[float]], learner_lp: list[list[float]]) -> dict:
    tok = [s - t for ss, ls in zip(sampler_lp, learner_lp) for s, t in zip(ss, ls)]  # log pi_s - log pi_l
    seq = [sum(s - t for s, t in zip(ss, ls)) for ss, ls in zip(sampler_lp, learner_lp)]
    outside = lambda xs, c: sum(abs(x) > math.log(c) for x in xs) / len(xs)  # noqa: E731  ratio outside [1/C, C]
    return {"tokens": len(tok), "sequences": len(seq), "mean_abs": sum(map(abs, tok)) / len(tok),
            "max_abs": max(map(abs, tok)), "mean": sum(tok) / len(tok),
            "seq_logratio_mean_abs": sum(map(abs, seq)) / len(seq), "seq_logratio_max_abs": max(map(abs, seq)),
            "token_outside_2": outside(tok, 2), "token_outside_3": outside(tok, 3),
            "seq_outside_3": outside(seq, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    p.add_argument("--sharpen", type=float, default=1.0)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", type=Path, default=REPO / ".cache" / "drift")
    p.add_argument("--out", type=Path)
    a = p.parse_args()

    from omegaconf import OmegaConf

    from examples.demo.tiny import build_tokenizer
    from grpo_cli.rollout.colocated import ColocatedSampler

    a.work.mkdir(parents=True, exist_ok=True)
    model_dir = build(a.work, a.shape, a.sharpen)
    tok = build_tokenizer()
    prompts = [tok(f"{i}+{3 * i % 97}=")["input_ids"] for i in range(a.prompts)]
    results = {}
    for dtype in a.dtypes:
        scfg = OmegaConf.create(dict(dtype=dtype, seed=0, max_model_len=256 + a.max_tokens, gpu_memory_utilization=0.3,
                                     tensor_parallel_size=1, enforce_eager=True, sleep_level=0, engine_kwargs={},
                                     temperature=1.0, top_p=1.0, top_k=-1, max_tokens=a.max_tokens, stop=[]))
        mcfg = OmegaConf.create(dict(path=str(model_dir), tokenizer=None, trust_remote_code=False))
        rollouts = ColocatedSampler(scfg, mcfg).generate(prompts, n=a.n)
        results[dtype] = drift(rollouts.logprobs, learner_logp(model_dir, rollouts, a.device))
        print(f"sampler {dtype} vs learner float32 ({a.shape} x{a.sharpen:g}): " + json.dumps(
            {k: round(v, 6) if isinstance(v, float) else v for k, v in results[dtype].items()}), flush=True)
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
