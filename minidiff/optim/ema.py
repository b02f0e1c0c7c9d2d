"""Exponential moving average of the parameters, for sampling (lesson 05).

After each optimizer step,   shadow <- decay shadow + (1 - decay) p.

The average is a smoother model than the last iterate (diffusion models sample markedly better
from it).  ``with ema.swapped():`` puts the averaged weights into the model for sampling and
restores the trained weights afterwards, even if the block raises.
"""
from __future__ import annotations

import contextlib

from minidiff import backend

__all__ = ["EMA"]


class EMA:
    """Shadow copies of ``params`` (a list of Parameters, or a Module's ``parameters()``)."""

    def __init__(self, params, decay: float = 0.999):
        if hasattr(params, "parameters"):
            params = params.parameters()
        self.params = list(params)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.shadow = [p.data.copy() for p in self.params]
        self.num_updates = 0

    def update(self) -> None:
        """shadow <- decay shadow + (1 - decay) p, in place."""
        self.num_updates += 1
        for s, p in zip(self.shadow, self.params):
            s *= self.decay
            s += (1.0 - self.decay) * p.data

    def copy_to(self, params=None) -> None:
        """Overwrite ``params`` (default: the tracked ones) with the averages."""
        for s, p in zip(self.shadow, self.params if params is None else list(params)):
            p.data = s.copy()

    @contextlib.contextmanager
    def swapped(self):
        """Inside the block the parameters hold the EMA weights; afterwards the originals."""
        saved = [p.data for p in self.params]
        try:
            for s, p in zip(self.shadow, self.params):
                p.data = s.copy()
            yield self
        finally:
            for data, p in zip(saved, self.params):
                p.data = data

    def state_dict(self) -> dict:
        out = {f"shadow.{i}": s.copy() for i, s in enumerate(self.shadow)}
        out["num_updates"] = backend.host.asarray(self.num_updates, dtype=backend.host.int64)
        out["decay"] = backend.host.asarray(self.decay, dtype=backend.host.float64)
        return out

    def load_state_dict(self, state: dict) -> None:
        expected = {f"shadow.{i}" for i in range(len(self.params))} | {"num_updates", "decay"}
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        wrong = [f"shadow.{i}" for i, p in enumerate(self.params)
                 if f"shadow.{i}" in state and tuple(state[f"shadow.{i}"].shape) != p.shape]
        if missing or extra or wrong:
            raise ValueError(f"EMA.load_state_dict: missing {missing}, unexpected {extra}, "
                             f"wrong shapes {wrong}")
        self.shadow = [backend.to_device(state[f"shadow.{i}"], p.backend).astype(p.dtype)
                       for i, p in enumerate(self.params)]
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
