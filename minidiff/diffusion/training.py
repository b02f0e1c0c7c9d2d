"""Algorithm 1 of Ho et al. 2020, one training step (lesson 04):

    t ~ Uniform({1, ..., T}),  eps ~ N(0, I),  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (2.4),
    loss = || eps - eps_theta(x_t, t) ||^2                                        (4.6)

(or the x_0 / v target (2.6), optionally Min-SNR weighted (4.9)).  t is drawn as a 0-based
index in [0, T): index t is the paper's step t + 1.
"""
from __future__ import annotations

from minidiff import backend
from minidiff.diffusion._util import raw
from minidiff.diffusion.forward import predict_v, q_sample
from minidiff.diffusion.losses import TARGETS, loss_simple
from minidiff.tensor import Tensor

__all__ = ["training_step"]


def training_step(model, schedule, x0, target_type: str = "eps",
                  min_snr_gamma: float | None = None, t=None, noise=None, part=None):
    """Loss Tensor of Algorithm 1 for the batch ``x0`` (array or Tensor, shape (N, ...)).

    ``model(Tensor x_t, t)`` predicts ``target_type``; ``t`` and ``noise`` default to fresh
    draws.  ``part`` (a slice): draw t and noise for all N items, as without it, then compute
    the loss of ``x0[part]`` only, so that data-parallel ranks that each take their part of one
    batch draw the same numbers; the model's own draws (dropout masks) then come from a
    stretch of the stream 2^64 draws per item further on, so that parts get independent masks
    and the generator still ends in the same state for every part.  Call ``.backward()`` on
    the result.
    """
    if target_type not in TARGETS:
        raise ValueError(f"target_type: expected one of {TARGETS}, got {target_type!r}")
    x0 = raw(x0)
    n = x0.shape[0]
    if t is None:
        t = backend.to_device(backend.randint(0, schedule.num_timesteps, (n,)),
                              backend.backend_name_of(x0))
    if noise is None:
        noise = backend.randn(*x0.shape, dtype=x0.dtype)
    if part is not None:
        x0, t, noise = x0[part], t[part], noise[part]
    x_t = q_sample(schedule, x0, t, noise)
    offset = 0 if part is None else (part.start or 0) << 64
    with backend.rng_offset(offset):
        prediction = model(Tensor(x_t), t)
    target = {"eps": lambda: noise, "x0": lambda: x0,
              "v": lambda: predict_v(schedule, x0, t, noise)}[target_type]()
    return loss_simple(prediction, target, t=t, schedule=schedule, target_type=target_type,
                       min_snr_gamma=min_snr_gamma)
