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

#: float32 rounding of 2 u / 255 - 1 may step just past +-1
_RANGE_TOLERANCE = 1e-5


def _check_batch(x0, x0_range) -> None:
    """Refuse data that is not a float array within ``x0_range`` (raw uint8 pixels trained
    silently); ``x0_range=None`` (latents) checks the dtype only."""
    if not backend.is_array(x0) or x0.dtype.kind != "f":
        kind = getattr(x0, "dtype", type(x0).__name__)
        raise ValueError(f"training_step: x0 must be a float array of images in [-1, 1], got "
                         f"{kind} (uint8 pixels go through data.to_unit_range first)")
    if x0_range is None:
        return
    low, high = float(x0.min()), float(x0.max())
    if low < x0_range[0] - _RANGE_TOLERANCE or high > x0_range[1] + _RANGE_TOLERANCE:
        raise ValueError(f"training_step: x0 must be images in [-1, 1], got values in "
                         f"[{low:g}, {high:g}] (uint8 pixels go through data.to_unit_range)")


def _check_timesteps(schedule, t, n: int) -> None:
    if not backend.is_array(t) or t.shape != (n,) or t.dtype.kind not in "iu":
        raise ValueError(f"training_step: t must be {n} integer indices, got "
                         f"{getattr(t, 'dtype', type(t).__name__)} of shape "
                         f"{getattr(t, 'shape', None)}")
    if n and (int(t.min()) < 0 or int(t.max()) >= schedule.num_timesteps):
        raise ValueError(f"training_step: t must lie in [0, T) = [0, {schedule.num_timesteps})"
                         f", got [{int(t.min())}, {int(t.max())}]")


def training_step(model, schedule, x0, target_type: str = "eps",
                  min_snr_gamma: float | None = None, t=None, noise=None, part=None,
                  x0_range=(-1.0, 1.0), cond=None):
    """Loss Tensor of Algorithm 1 for the batch ``x0`` (array or Tensor, shape (N, ...)).

    ``model(Tensor x_t, t)`` predicts ``target_type``; ``t`` and ``noise`` default to fresh
    draws.  ``part`` (a slice): draw t and noise for all N items, as without it, then compute
    the loss of ``x0[part]`` only, so that data-parallel ranks that each take their part of one
    batch draw the same numbers; the model's own draws (dropout masks) then come from a
    stretch of the stream 2^64 draws per item further on, so that parts get independent masks
    and the generator still ends in the same state for every part.  ``x0_range``: the values
    x0 must lie in (pixels: [-1, 1]); None for data with no fixed range, such as latents.
    ``cond``: a conditioned model's inputs (a dict of arrays with N rows, lesson 11); the
    model is then called ``model(x_t, t, cond)``, with every array cut to ``part`` too.
    Call ``.backward()`` on the result.
    """
    if target_type not in TARGETS:
        raise ValueError(f"target_type: expected one of {TARGETS}, got {target_type!r}")
    x0 = raw(x0)
    _check_batch(x0, x0_range)
    n = x0.shape[0]
    if t is not None:
        _check_timesteps(schedule, raw(t), n)
    if t is None:
        t = backend.to_device(backend.randint(0, schedule.num_timesteps, (n,)),
                              backend.backend_name_of(x0))
    if noise is None:
        noise = backend.randn(*x0.shape, dtype=x0.dtype)
    if part is not None:
        x0, t, noise = x0[part], t[part], noise[part]
        cond = None if cond is None else {k: v[part] for k, v in cond.items()}
    x_t = q_sample(schedule, x0, t, noise)
    offset = 0 if part is None else (part.start or 0) << 64
    with backend.rng_offset(offset):
        prediction = model(Tensor(x_t), t) if cond is None else model(Tensor(x_t), t, cond)
    target = {"eps": lambda: noise, "x0": lambda: x0,
              "v": lambda: predict_v(schedule, x0, t, noise)}[target_type]()
    return loss_simple(prediction, target, t=t, schedule=schedule, target_type=target_type,
                       min_snr_gamma=min_snr_gamma)
