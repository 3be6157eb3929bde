"""The learner on a recorded global batch, in one process or as one rank of torchrun (tests only).

    python tests/dist_learner_harness.py OUT OVERRIDES_JSON            # the 1-process reference
    torchrun --nproc-per-node 2 tests/dist_learner_harness.py OUT OVERRIDES_JSON
    (OVERRIDES_JSON with "train.strategy=fsdp2": the same with sharded parameters)

For each algo variant, a fresh learner takes 3 steps on the same fixed RolloutBatch (B = 4 groups
of G = 4 completions of mixed lengths, a few truncated); each rank trains on its contiguous share of
groups. Every rank writes OUT/rank{R}.pt: parameters after step 1 and step 3, and the metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from grpo_cli.config.validate import compose
from grpo_cli.learner.learner import RolloutBatch
from grpo_cli.observe.logger import to_host
from grpo_cli.parallel import dist as distributed
from tests.conftest import make_learner

# Plain SGD compares the gradients themselves: AdamW's first step is ~lr * sign(g), which turns the
# float-rounding differences of near-zero gradient entries into lr-sized ones (measured: 2-4e-6 at
# lr 1e-3), so the AdamW variant is compared to 1e-5.
SGD = ["optim.optimizer._target_=torch.optim.SGD", "~optim.optimizer.betas", "~optim.optimizer.fused",
       "~optim.optimizer.weight_decay", "optim.lr=0.05"]
VARIANTS = {  # name -> overrides: every aggregation, and mu > 1
    "grpo_seq_mean": ["algo=grpo", *SGD],
    "dapo_token_mean": ["algo=dapo", *SGD],
    "dr_grpo_constant": ["algo=dr_grpo", *SGD],
    "grpo_mu2": ["algo=grpo", "algo.num_iterations=2", *SGD],
    "grpo_adamw": ["algo=grpo", "optim.lr=1e-3"],
    "dapo_rank1_empty": ["algo=dapo", *SGD],  # rank 1 trains on nothing but joins every collective
    "grpo_beta": ["algo=grpo", "algo.beta=0.04", "algo.num_iterations=2", *SGD],  # a (sharded) reference
}
B, G = 4, 4


def recorded_batch() -> RolloutBatch:
    g = torch.Generator().manual_seed(1234)
    n = B * G
    prompts = [torch.randint(3, 96, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
               for _ in range(B) for _ in range(G)]
    completions = [torch.randint(3, 96, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
                   for _ in range(n)]
    logp = [(-torch.rand(len(c), generator=g) * 3).tolist() for c in completions]
    adv = torch.randn(n, generator=g)
    finish = ["length" if i % 5 == 0 else "stop" for i in range(n)]
    # Every third rollout is multi-turn: tokens 1-2 a tool's result (tool_mask 0: read, never trained).
    tool_mask = [[0 if i % 3 == 0 and 1 <= t < 3 and len(c) >= 4 else 1 for t in range(len(c))]
                 for i, c in enumerate(completions)]
    return RolloutBatch.build(prompts, completions, logp, adv, 0, finish, tool_mask)


def share(batch: RolloutBatch, me: distributed.Dist, last_rank_empty: bool = False) -> RolloutBatch | None:
    """Rank r's contiguous groups: rows [r * N / world, (r + 1) * N / world). With `last_rank_empty`
    the last rank has none (all its groups filtered out) and the global batch is the other ranks'
    rows, which is what the 1-process run gets."""
    per = len(batch) // max(me.world, 2 if last_rank_empty else 1)
    if last_rank_empty and me.world > 1 and me.rank == me.world - 1:
        return None
    return batch.select(torch.arange(me.rank * per, (me.rank + 1) * per))


def main(out: Path, overrides: list[str]) -> None:
    me = distributed.init(60)
    result = {}
    for name, extra in VARIANTS.items():
        cfg = compose(overrides + extra)
        torch.manual_seed(0)
        learner = make_learner(cfg, total_optim_steps=10, dist=me)
        batch = share(recorded_batch(), me, last_rank_empty=name.endswith("_empty"))
        params, metrics = {}, []
        for step in (1, 2, 3):
            metrics.append(to_host(learner.train_step(batch)))
            if step in (1, 3):  # full tensors, also when fsdp2 shards them
                params[step] = {k: v.clone() for k, v in learner.weights()}
        held = sum(getattr(p, "_local_tensor", p).numel() for p in learner.policy.parameters())  # this rank's part
        result[name] = {"params": params, "metrics": metrics, "held": held}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{me.rank}.pt")
    distributed.destroy()


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
