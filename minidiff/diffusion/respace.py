"""Sampling with fewer steps: respacing a schedule (Nichol & Dhariwal 2021, section 4; lesson
08, (8.8)).

The closed form (2.4) says the marginals q(x_t | x_0) depend on alphabar_t only.  To sample
with a subsequence of steps t_1 < t_2 < ... < t_S of the original T, keep those marginals
exactly and define a new forward process whose i-th step goes from t_{i-1} to t_i:

    alphabar'_i = alphabar_{t_i},     beta'_i = 1 - alphabar_{t_i} / alphabar_{t_{i-1}}
    (alphabar_{t_0} = 1 before the first kept step).

This is *not* the original betas indexed at t_i: one new step stands for t_i - t_{i-1} old
ones, and the product of the new alphas telescopes back to alphabar at every kept step.

A network trained on the original steps must still be called with the original timestep, so
the respaced schedule carries ``timestep_map``: new index i -> original index t_i (0-based, as
everywhere: index t is the paper's step t + 1).
"""
from __future__ import annotations

from minidiff import backend
from minidiff.diffusion.schedule import NoiseSchedule

__all__ = ["space_timesteps", "respace"]


def space_timesteps(num_timesteps: int, steps: int):
    """``steps`` 0-based indices spread evenly over [0, num_timesteps - 1], always including
    the last one (the pure-noise end), as a sorted host list of ints."""
    if not 1 <= int(steps) <= num_timesteps:
        raise ValueError(f"steps: expected an integer in [1, {num_timesteps}], got {steps!r}")
    steps = int(steps)
    if steps == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (steps - 1)
    kept = sorted({int(round(i * stride)) for i in range(steps)})
    return kept


def respace(schedule, use_timesteps) -> NoiseSchedule:
    """A schedule over the kept 0-based indices ``use_timesteps`` with
    beta'_i = 1 - alphabar_{t_i} / alphabar_{t_{i-1}} (module docstring); its
    ``timestep_map`` gives the original index of each new step."""
    host = backend.host
    kept = sorted({int(t) for t in use_timesteps})
    if not kept or kept[0] < 0 or kept[-1] >= schedule.num_timesteps:
        raise ValueError(f"use_timesteps: expected a non-empty set of indices in "
                         f"[0, {schedule.num_timesteps - 1}], got {list(use_timesteps)!r}")
    abar = host.asarray(backend.to_host(schedule.alphas_cumprod), dtype=host.float64)[kept]
    # beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}}, computed inside from the kept abar
    out = NoiseSchedule.from_alphas_cumprod(abar, name=f"{schedule.name}[respaced {len(kept)}]")
    out.timestep_map = backend.xp().asarray(kept, dtype=backend.xp().int64)
    out.original_num_timesteps = schedule.num_timesteps
    return out
