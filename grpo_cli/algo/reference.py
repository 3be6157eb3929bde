"""Reference refresh (the sources' step 5): every K steps the KL reference moves to the policy.

    ref <- alpha * policy + (1 - alpha) * ref      every `algo.ref_refresh_every` steps

alpha = 1 copies the policy (the sources' "reference = current policy"); alpha < 1 is TRL's
`ref_model_mixup_alpha`. The policy's weights come from `Learner.weights()`, so with LoRA the
reference gets the merged weights. `state_dict` holds what a resumed run needs: the reference's
weights once they differ from the initial model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from grpo_cli.observe.console import console


class ReferenceRefresh:
    def __init__(self, every: int, alpha: float, ref: torch.nn.Module | None,
                 policy_weights: Callable[[], Iterator[tuple[str, torch.Tensor]]]):
        self.every, self.alpha, self.ref, self.policy_weights = every, alpha, ref, policy_weights
        self.last = 0  # step of the last refresh; 0 = the reference is still the initial model

    @classmethod
    def from_learner(cls, algo, learner) -> ReferenceRefresh:
        return cls(algo.ref_refresh_every, algo.ref_refresh_alpha, learner.ref_weights, learner.weights)

    @torch.no_grad()
    def __call__(self, step: int) -> dict[str, float]:
        """After step `step`: refresh when it is due; returns the event's metrics ({} otherwise)."""
        if not self.every or self.ref is None or step % self.every:
            return {}
        ref = self.ref.state_dict()
        seen = set()  # tied weights (embeddings = lm_head) share storage: mix them once
        for name, w in self.policy_weights():
            r = ref[name]
            if r.data_ptr() in seen:
                continue
            seen.add(r.data_ptr())
            if self.alpha == 1.0:
                r.copy_(w)
            else:
                r.mul_(1.0 - self.alpha).add_(w.to(r.dtype), alpha=self.alpha)
        self.ref.load_state_dict(ref)  # a no-op copy unless the reference is sharded (fsdp2: gathered above)
        self.last = step
        console.print(f"step {step}: reference refreshed (ref <- {self.alpha:g} * policy + {1 - self.alpha:g} * ref)")
        return {"ref/refreshed": 1.0}

    def state_dict(self) -> dict:
        """For checkpoints: the reference's weights once a refresh has changed them."""
        if not self.last:
            return {"last": 0}
        return {"last": self.last, "weights": {k: v.detach().cpu() for k, v in self.ref.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.last = state["last"]
        if self.last:
            self.ref.load_state_dict(state["weights"])
