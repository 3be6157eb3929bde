"""User callbacks: your own code at named points of every step (`train.callbacks`).

Each entry is a dotted path to a callable `fn(event: str, step: int)`; it is called, in order, at:

    rollout      the step's rollouts are drawn and scored (before the update)
    learner      the update is done (before the weights are pushed to the sampler)
    checkpoint   a checkpoint's model is exported (before its trainer state is written)

For example a watchdog, a profiler window, or a test that stops the process at a known point.
"""

from __future__ import annotations

from collections.abc import Callable

from hydra.utils import get_object

from grpo_cli.errors import ConfigError

EVENTS = ("rollout", "learner", "checkpoint")


class Callbacks:
    def __init__(self, fns: list[Callable[[str, int], object]]):
        self.fns = fns

    @classmethod
    def from_paths(cls, paths: list[str]) -> Callbacks:
        fns = []
        for path in paths:
            try:
                fn = get_object(path)
            except Exception as err:
                raise ConfigError(f"train.callbacks: cannot load {path!r} ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''})") from None
            if not callable(fn):
                raise ConfigError(f"train.callbacks: {path!r} is not callable")
            fns.append(fn)
        return cls(fns)

    def __call__(self, event: str, step: int) -> None:
        for fn in self.fns:
            fn(event, step)
