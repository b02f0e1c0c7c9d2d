"""Algorithm 1 of Ho et al. 2020, one training step (lesson 04):

    t ~ Uniform({1, ..., T}),  eps ~ N(0, I),  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (2.4),
    loss = || eps - eps_theta(x_t, t) ||^2                                        (4.6)

(or the x_0 / v target (2.6), optionally Min-SNR weighted (4.9)).  t is drawn as a 0-based
index in [0, T): index t is the paper's step t + 1.

**Objectives** (lesson 13; Ho et al. 2020 section 3.4, Nichol & Dhariwal 2021 section 3.1):

* ``simple``: L_simple above.
* ``vlb``: the true bound (4.2) in bits per dim, estimated at the drawn t as

      L_vlb ~= L_T + T * L_t                                                        (13.2)

  (L_t = ``vlb.bound_term``: the KL (4.3), or the decoder NLL (4.7) at index 0), an unbiased
  estimate of the whole bound for uniform t, directly comparable to ``minidiff eval``'s
  bits/dim.  Its gradient drives the mean (and a learned variance).
* ``hybrid``: L_simple + vlb_weight * L_vlb with a learned variance, where the bound term sees
  the mean prediction *detached*: only the variance channels learn from it (improved DDPM).

``weights`` (N,) multiply each item's loss: 1 / (T p_t) for t drawn with probabilities p_t
(``timestep_sampler``), which keeps the estimate unbiased for the uniform-t loss.
"""
from __future__ import annotations

import math

from minidiff import backend, ops
from minidiff.diffusion._util import raw
from minidiff.diffusion.forward import predict_eps_from_v, predict_eps_from_x0, predict_v, q_sample
from minidiff.diffusion.losses import TARGETS, loss_simple
from minidiff.diffusion.reverse import VARIANCES, p_mean_variance
from minidiff.diffusion.vlb import bound_term, prior_term
from minidiff.tensor import Tensor

__all__ = ["training_step", "OBJECTIVES"]

OBJECTIVES = ("simple", "vlb", "hybrid")

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
                  x0_range=(-1.0, 1.0), objective: str = "simple",
                  variance: str = "fixed_small", vlb_weight: float = 0.001, weights=None,
                  details: bool = False, cond=None):
    """Loss Tensor of Algorithm 1 for the batch ``x0`` (array or Tensor, shape (N, ...)).

    ``model(Tensor x_t, t)`` predicts ``target_type``; ``t`` and ``noise`` default to fresh
    draws.  ``part`` (a slice): draw t and noise for all N items, as without it, then compute
    the loss of ``x0[part]`` only, so that data-parallel ranks that each take their part of one
    batch draw the same numbers; the model's own draws (dropout masks) then come from a
    stretch of the stream 2^64 draws per item further on, so that parts get independent masks
    and the generator still ends in the same state for every part.  ``x0_range``: the values
    x0 must lie in (pixels: [-1, 1]); None for data with no fixed range, such as latents.
    ``objective`` / ``variance`` / ``vlb_weight``: the objective (module docstring; a learned
    variance means the model outputs 2C channels); ``weights``: per-item weights (N,) of an
    importance-sampled t.  Call ``.backward()`` on the result; ``details=True`` returns
    ``(loss, info)`` with the batch means ``simple`` and ``vlb`` (bits/dim) where computed and
    ``per_item``, the unweighted per-item losses (a host float64 array).
    ``cond``: a conditioned model's inputs (a dict of arrays with N rows, lesson 11); the
    model is then called ``model(x_t, t, cond)``, with every array cut to ``part`` too.
    """
    if target_type not in TARGETS:
        raise ValueError(f"target_type: expected one of {TARGETS}, got {target_type!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
    if variance not in VARIANCES:
        raise ValueError(f"variance: expected one of {VARIANCES}, got {variance!r}")
    if objective == "hybrid" and variance != "learned":
        raise ValueError(f"objective: 'hybrid' needs variance 'learned', got {variance!r}")
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
        weights = None if weights is None else raw(weights)[part]
        cond = None if cond is None else {k: v[part] for k, v in cond.items()}
    x_t = q_sample(schedule, x0, t, noise)
    offset = 0 if part is None else (part.start or 0) << 64
    with backend.rng_offset(offset):
        output = model(Tensor(x_t), t) if cond is None else model(Tensor(x_t), t, cond)
    channels = x_t.shape[1]
    prediction = output[:, :channels] if variance == "learned" else output
    target = {"eps": lambda: noise, "x0": lambda: x0,
              "v": lambda: predict_v(schedule, x0, t, noise)}[target_type]()
    info = {}
    per_item = None
    if objective in ("simple", "hybrid"):
        per_item = loss_simple(prediction, target, t=t, schedule=schedule,
                               target_type=target_type, min_snr_gamma=min_snr_gamma,
                               reduce=False)
        info["simple"] = float(per_item.data.mean())
    if objective in ("vlb", "hybrid"):
        bound = _bound_bits(schedule, x0, x_t, t, prediction, output, target_type, variance,
                            frozen_mean=objective == "hybrid")
        info["vlb"] = float(bound.data.mean())
        per_item = bound if per_item is None else per_item + vlb_weight * bound
    info["per_item"] = backend.to_host(per_item.data).astype("float64")
    if weights is not None:
        per_item = per_item * backend.to_device(raw(weights), backend.backend_name_of(x0)
                                                ).astype(per_item.dtype)
    loss = per_item.mean()
    return (loss, info) if details else loss


def _bound_bits(schedule, x0, x_t, t, prediction, output, target_type, variance, frozen_mean):
    """L_vlb per item in bits per dim, (13.2): L_T + T * L_t at the drawn t; the mean
    prediction detached when ``frozen_mean`` (hybrid: only a learned v learns from it)."""
    eps = {"eps": lambda: prediction,
           "v": lambda: predict_eps_from_v(schedule, x_t, t, prediction),
           "x0": lambda: predict_eps_from_x0(schedule, x_t, t, prediction)}[target_type]()
    if frozen_mean:
        eps = eps.detach()
    if variance == "learned":
        eps = ops.concatenate([eps, output[:, x_t.shape[1]:]], axis=1)
    out = p_mean_variance(schedule, eps, x_t, t, variance=variance, clip_x0=False)
    term = bound_term(schedule, x0, x_t, t, out["mean"], out["log_variance"])
    if not isinstance(term, Tensor):
        term = Tensor(term)
    prior = prior_term(schedule, x0).astype(term.dtype)
    return (term * float(schedule.num_timesteps) + prior) * (1.0 / math.log(2.0))
