"""Sampling: ancestral DDPM (Algorithm 2) and DDIM, plus DDIM inversion (lesson 08).

**DDPM** (Ho et al. 2020, Algorithm 2).  Start from x_T ~ N(0, I); for t = T..1 draw
x_{t-1} = mu_theta(x_t, t) + sigma_t z with z ~ N(0, I) (3.5)-(3.7), except at the last step
(t = 1, index 0), which returns the mean and adds no noise.

**DDIM** (Song et al. 2021, eq. (12); lesson 08, section 4).  For a decreasing subsequence of
indices, from index t to the previous kept index s (s = -1 meaning "x_0", with
alphabar_{-1} = 1):

    x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)                    (2.5)
    sigma  = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)      (8.6)
    x_s    = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_theta + sigma z. (8.5)

With eta = 1 and s = t - 1, sigma^2 = beta~_t (3.3) and the mean equals the posterior mean
(3.4) at x0_hat, i.e. one DDPM step with fixed_small variance; with eta = 0 the map is
deterministic (an Euler step of an ODE, (8.7)), and run backwards (``ddim_invert``: x_s -> x_t
with the same formula, s < t) it encodes data into noise.

Fewer DDPM steps go through ``respace`` (betas re-derived from alphabar, (8.8)).  Models are called
as ``eps_model(Tensor x_t, t)`` with ``t`` an int64 array of *original* 0-based indices
(index t = paper's step t + 1), under ``no_grad``; a Tensor output is unwrapped.
``progress(i, total)`` is called after each step; with ``return_frames=True`` the result is
``(x_0, frames)``, frames being x_T and every ``frame_every``-th state after it (and the last).

**Inpainting by replacement** (RePaint, Lugmayr et al. 2022, without its resampling; lesson 11).
Both samplers take ``known=(x0_known, mask)``: ``mask`` is 1 where x is to be filled and 0
where it is known (broadcast against x: (N, 1, H, W) covers every channel).  After every step,
whose state x_s has the noise level of index s (s = -1 at the end, alphabar_{-1} = 1), the known
part is replaced by the forward-noised original (2.4), with fresh noise eps' ~ N(0, I):

    x_s <- mask * x_s + (1 - mask) * (sqrt(abar_s) x0_known + sqrt(1 - abar_s) eps')     (11.8)

so the known coordinates end exactly at x0_known, and the network, which sees the whole x_s
at every step, fills the rest to fit them.  x_T is not replaced (it is noise either way).  The
draws of eps' come after the step's own draws (DDPM's z), so a mask of ones samples what the
plain sampler samples only where no noise is drawn (DDIM with eta = 0).
"""
from __future__ import annotations

import math

from minidiff import backend
from minidiff.diffusion._util import raw
from minidiff.diffusion.forward import predict_x0_from_eps, q_sample
from minidiff.diffusion.respace import respace, space_timesteps
from minidiff.diffusion.reverse import p_mean_variance
from minidiff.tensor import Tensor, no_grad

__all__ = ["ddpm_sample", "ddim_step", "ddim_sample", "ddim_invert", "SAMPLERS", "run_sampler"]

#: the two reverse processes a user can choose (``--sampler``)
SAMPLERS = ("ddim", "ddpm")


def _call(eps_model, x, t):
    with no_grad():
        return raw(eps_model(Tensor(x), t))


def _abar(schedule, index: int) -> float:
    return 1.0 if index < 0 else float(schedule.alphas_cumprod[index])


def _check_steps(schedule, steps) -> None:
    """``steps``: None (all T) or an integer in [1, T]; both samplers say the same."""
    if steps is None:
        return
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= schedule.num_timesteps:
        raise ValueError(f"steps: expected None (all T) or an integer in [1, T = "
                         f"{schedule.num_timesteps}], got {steps!r}")


def _replace_known(schedule, x, known, index: int):
    """(11.8): the known part of state ``x`` (noise level of ``index``; -1 = x_0) replaced
    by ``x0_known`` noised to that level; ``known`` is ``(x0_known, mask)`` or None."""
    if known is None:
        return x
    xp = backend.array_module_of(x)
    x0_known, mask = (xp.asarray(raw(a)).astype(x.dtype, copy=False) for a in known)
    if index >= 0:
        t = xp.full((x.shape[0],), index, dtype=xp.int64)
        eps = backend.randn(*x.shape, dtype=x.dtype)
        x0_known = q_sample(schedule, x0_known, t, eps).astype(x.dtype, copy=False)
    return mask * x + (1 - mask) * x0_known


def _finish(x, frames, return_frames):
    return (x, frames) if return_frames else x


def ddpm_sample(eps_model, schedule, shape, steps=None, variance="fixed_small",
                clip_x0=True, noise=None, progress=None, return_frames=False,
                frame_every: int = 1, dtype=None, known=None):
    """Algorithm 2: x_T ~ N(0, I), x_{t-1} = mu_theta + sigma_t z, the last step the mean.

    ``steps`` < T samples with a respaced schedule (``respace``); ``noise`` fixes x_T;
    ``dtype`` defaults to minidiff's default float dtype (float32 unless changed);
    ``known=(x0_known, mask)`` inpaints by replacement (11.8).
    """
    xp = backend.xp()
    _check_steps(schedule, steps)
    if steps is not None and int(steps) != schedule.num_timesteps:
        sched = respace(schedule, space_timesteps(schedule.num_timesteps, steps))
        tmap = sched.timestep_map
    else:
        sched, tmap = schedule, xp.arange(schedule.num_timesteps, dtype=xp.int64)
    x = backend.randn(*shape, dtype=dtype) if noise is None else raw(noise)
    frames = [x] if return_frames else None
    total = sched.num_timesteps
    for i, index in enumerate(reversed(range(total))):
        t = xp.full((shape[0],), index, dtype=xp.int64)
        eps = _call(eps_model, x, tmap[t])
        out = p_mean_variance(sched, eps, x, t, variance=variance, clip_x0=clip_x0)
        if index > 0:
            z = backend.randn(*shape, dtype=x.dtype)
            x = out["mean"] + xp.exp(0.5 * out["log_variance"]) * z
        else:
            x = out["mean"]
        x = _replace_known(sched, x, known, index - 1)
        if progress is not None:
            progress(i + 1, total)
        if return_frames and ((i + 1) % frame_every == 0 or index == 0):
            frames.append(x)
    return _finish(x, frames, return_frames)


def ddim_step(schedule, eps_pred, x_t, t: int, t_prev: int, eta: float = 0.0, noise=None,
              clip_x0: bool = False):
    """One DDIM update from 0-based index ``t`` to ``t_prev`` (< t; -1 means x_0), eq. (12).

    Returns ``(x_prev, mean, variance)`` with variance sigma^2 a float; ``noise`` is z.
    A learned variance's extra channels are ignored: DDIM uses the first C only."""
    xp = backend.array_module_of(x_t)
    eps_pred = raw(eps_pred)[:, :x_t.shape[1]]
    abar_t, abar_s = _abar(schedule, t), _abar(schedule, t_prev)
    x0_hat = predict_x0_from_eps(schedule, x_t, xp.full((x_t.shape[0],), t), eps_pred)
    if clip_x0:
        x0_hat = xp.clip(x0_hat, -1.0, 1.0)
        eps_pred = (x_t - math.sqrt(abar_t) * x0_hat) / math.sqrt(1.0 - abar_t)
    sigma2 = eta ** 2 * (1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s)
    mean = math.sqrt(abar_s) * x0_hat + math.sqrt(max(1.0 - abar_s - sigma2, 0.0)) * eps_pred
    if sigma2 > 0:
        z = backend.randn(*x_t.shape, dtype=x_t.dtype) if noise is None else raw(noise)
        return mean + math.sqrt(sigma2) * z, mean, sigma2
    return mean, mean, sigma2


def ddim_sample(eps_model, schedule, shape, steps=None, eta: float = 0.0, clip_x0=True,
                noise=None, progress=None, return_frames=False, frame_every: int = 1,
                dtype=None, known=None):
    """DDIM sampling over ``steps`` evenly spaced indices (all T when None), eq. (12);
    ``dtype`` defaults to minidiff's default float dtype; ``known=(x0_known, mask)``
    inpaints by replacement (11.8)."""
    xp = backend.xp()
    _check_steps(schedule, steps)
    kept = space_timesteps(schedule.num_timesteps, steps or schedule.num_timesteps)
    x = backend.randn(*shape, dtype=dtype) if noise is None else raw(noise)
    frames = [x] if return_frames else None
    sequence = list(reversed(kept))
    for i, t in enumerate(sequence):
        t_prev = sequence[i + 1] if i + 1 < len(sequence) else -1
        eps = _call(eps_model, x, xp.full((shape[0],), t, dtype=xp.int64))
        x, _, _ = ddim_step(schedule, eps, x, t, t_prev, eta=eta, clip_x0=clip_x0)
        x = _replace_known(schedule, x, known, t_prev)
        if progress is not None:
            progress(i + 1, len(sequence))
        if return_frames and ((i + 1) % frame_every == 0 or t_prev == -1):
            frames.append(x)
    return _finish(x, frames, return_frames)


def run_sampler(sampler: str, eps_model, schedule, shape, steps=None, eta: float = 0.0,
                variance: str = "fixed_small", **options):
    """``ddim_sample`` with ``eta`` or ``ddpm_sample`` with the reverse ``variance``, as
    ``sampler`` says; ``options`` go to both (clip_x0, progress, known, return_frames, ...)."""
    if sampler == "ddim":
        return ddim_sample(eps_model, schedule, shape, steps=steps, eta=eta, **options)
    if sampler == "ddpm":
        return ddpm_sample(eps_model, schedule, shape, steps=steps, variance=variance, **options)
    raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")


def ddim_invert(eps_model, schedule, x0, steps=None):
    """Deterministic DDIM (eta = 0) run forwards: data x0 -> noise x_T over the same indices
    ``ddim_sample`` uses, x_t = sqrt(abar_t) x0_hat + sqrt(1 - abar_t) eps_theta(x_s, s)."""
    xp = backend.array_module_of(raw(x0))
    kept = space_timesteps(schedule.num_timesteps, steps or schedule.num_timesteps)
    x = raw(x0)
    previous = [-1] + kept[:-1]
    for s, t in zip(previous, kept):
        # the model is evaluated at the point we stand on (index s; at x_0 use the first step)
        index = max(s, 0)
        eps = _call(eps_model, x, xp.full((x.shape[0],), index, dtype=xp.int64))
        eps = eps[:, :x.shape[1]]             # a learned variance's v is not needed
        abar_s, abar_t = _abar(schedule, s), _abar(schedule, t)
        x0_hat = (x - math.sqrt(1.0 - abar_s) * eps) / math.sqrt(abar_s)
        x = math.sqrt(abar_t) * x0_hat + math.sqrt(1.0 - abar_t) * eps
    return x
