"""Classifier-free guidance (lesson 11, (11.4)): one network, two conditions.

By Bayes' rule p(y | x_t) is proportional to p(x_t | y) / p(x_t), so
grad log p(y | x_t) = -(eps(x_t, y) - eps(x_t)) / sqrt(1 - abar_t); sampling from
p(x_t | y) p(y | x_t)^(s - 1) replaces eps by

    eps~ = eps(x_t, {}) + s (eps(x_t, y) - eps(x_t, {}))                          (11.4)

s = 0 is the unconditional model, s = 1 the conditional one, s > 1 pushes further towards y
(Ho & Salimans 2022 write the same as (1 + w) eps(x_t, y) - w eps(x_t, {}): s = 1 + w).
"""
from __future__ import annotations

import functools

from minidiff import backend
from minidiff.diffusion.forward import as_eps_model
from minidiff.ops import concatenate
from minidiff.tensor import Tensor

__all__ = ["MAX_GUIDANCE", "double_cond", "conditional_eps_model", "guided"]

#: the largest guidance scale s accepted.  Useful scales are 1 to about 10; beyond 100, eps~ of
#: (11.4) is s times the small difference of two predictions, and the x_0 it implies leaves
#: the data range by orders of magnitude (s = 1e300 overflows float32 at the first step).
MAX_GUIDANCE = 100.0


def double_cond(cond: dict, uncond: dict) -> dict:
    """[uncond; cond] along the batch axis, key by key: one forward for both halves."""
    xp = backend.xp()
    return {k: xp.concatenate([backend.array_of(uncond[k]), backend.array_of(cond[k])])
            for k in cond}


def conditional_eps_model(model, schedule, prediction: str):
    """``eps_model(x_t, t, cond)``: the conditioned network seen as eps_theta, whatever it
    predicts (eps, x_0 or v; ``as_eps_model``)."""

    def eps_model(x_t, t, cond):
        return as_eps_model(functools.partial(model, cond=cond), schedule, prediction)(x_t, t)
    return eps_model


def guided(eps_model, cond: dict, uncond: dict, scale: float):
    """The ``eps_model(x_t, t)`` of classifier-free guidance (11.4) for the samplers:
    one forward on the doubled batch [uncond; cond], then
    out = out_u + scale * (out_c - out_u) on the first C channels (C = x_t's channels; any
    further channels -- a learned variance -- are the conditional half's).
    ``eps_model(x_t, t, cond)`` is a conditional eps model (``conditional_eps_model``)."""
    both = double_cond(cond, uncond)

    def eps(x_t, t):
        n, c = x_t.shape[0], x_t.shape[1]
        xp = backend.xp()
        t = backend.to_device(backend.array_of(t))
        out = eps_model(concatenate([x_t, x_t]), xp.concatenate([t, t]), both)
        out = backend.array_of(out)
        out_u, out_c = out[:n], out[n:]
        mixed = out_u[:, :c] + scale * (out_c[:, :c] - out_u[:, :c])
        if out.shape[1] > c:
            mixed = xp.concatenate([mixed, out_c[:, c:]], axis=1)
        return Tensor(mixed)
    return eps
