"""A resume restores the learner's CUDA generator even when fewer GPUs are visible than at the save
(issue 19, defect 7). No GPU here: torch.cuda's RNG functions are replaced by a fake that behaves as
torch's does for N visible devices (an index past them raises IndexError, as
`torch.cuda.default_generators[i]` does)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from grpo_cli.state import checkpoint as run_state


class FakeCuda:
    """N visible GPUs, each with a generator state (a uint8 tensor, as torch's)."""

    def __init__(self, monkeypatch):
        self.gens: list[torch.Tensor] = []
        for mod in (torch.cuda, torch.cuda.random):
            for name in ("get_rng_state", "set_rng_state", "get_rng_state_all", "set_rng_state_all"):
                if hasattr(mod, name):
                    monkeypatch.setattr(mod, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(self.gens))
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.gens))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def visible(self, n: int) -> None:
        self.gens = [torch.full((16,), 10 * (i + 1), dtype=torch.uint8) for i in range(n)]

    def _index(self, device) -> int:
        i = torch.device(device).index if not isinstance(device, int) else device
        i = 0 if i is None else i
        _ = self.gens[i]  # IndexError past the visible devices, as torch.cuda.default_generators[i]
        return i

    def get_rng_state(self, device="cuda"):
        return self.gens[self._index(device)].clone()

    def set_rng_state(self, new_state, device="cuda"):
        self.gens[self._index(device)] = new_state.clone()

    def get_rng_state_all(self):
        return [g.clone() for g in self.gens]

    def set_rng_state_all(self, new_states):
        for i, s in enumerate(new_states):
            self.set_rng_state(s, i)


def _learner(device: str):
    return SimpleNamespace(device=torch.device(device), state_dict=lambda: {"trainable": {}},
                           rank_state_dict=lambda: {}, load_state_dict=lambda sd, exported_weights=None: None)


def _stream():
    return SimpleNamespace(state_dict=lambda: {}, load_state_dict=lambda sd: None)


@pytest.mark.parametrize("saved_on, restored_on", [("cuda:0", "cuda:0"), ("cuda:1", "cuda:0")])
def test_resume_on_fewer_visible_gpus_restores_the_learners_generator(monkeypatch, tmp_path, saved_on, restored_on):
    """Saved with 2 GPUs visible (learner on `saved_on`), resumed with 1 (e.g. CUDA_VISIBLE_DEVICES=1,
    so the same physical GPU is now cuda:0)."""
    cuda = FakeCuda(monkeypatch)
    cuda.visible(2)
    learner_gen = cuda.gens[torch.device(saved_on).index].clone()
    state = run_state.capture(3, _learner(saved_on), _stream(), SimpleNamespace(wandb_id=None), {}, tmp_path)
    cuda.visible(1)
    run_state.restore(state, tmp_path, _learner(restored_on), _stream())  # raised IndexError before the fix
    assert torch.equal(cuda.gens[0], learner_gen)


def test_old_checkpoints_with_every_gpus_generator_still_load(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    cuda.visible(1)
    old = run_state.rng_state() | {"cuda": [torch.full((16,), 7, dtype=torch.uint8),
                                             torch.full((16,), 8, dtype=torch.uint8)]}
    run_state.set_rng_state(old, torch.device("cuda:0"))
    assert torch.equal(cuda.gens[0], old["cuda"][0])


def test_a_cpu_learner_saves_no_cuda_generator(monkeypatch):
    FakeCuda(monkeypatch).visible(2)
    assert "cuda" not in run_state.rng_state(torch.device("cpu"))
