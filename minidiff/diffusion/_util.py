"""Small shared helpers for ``minidiff.diffusion``: per-item coefficient lookup and arithmetic
that works the same on backend arrays and on minidiff ``Tensor``s.

The one formula here is the broadcast used everywhere in the diffusion code (lesson 02):
a schedule array ``a`` (length T) and a per-item timestep vector ``t`` (shape (N,)) give

    a[t] reshaped to (N, 1, ..., 1)

so that ``a[t] * x`` scales item i of a batch ``x`` of shape (N, ...) by ``a[t_i]``.
Indices are 0-based: index t holds the paper's step t + 1.
"""
from __future__ import annotations

from minidiff import backend
from minidiff.tensor import Tensor


def raw(value):
    """The backend array behind ``value`` (a Tensor's ``.data``, an array itself)."""
    return value.data if isinstance(value, Tensor) else value


def xp_of(value):
    """The array module of ``value`` (a Tensor or an array); the active one otherwise."""
    data = raw(value)
    return backend.array_module_of(data) if backend.is_array(data) else backend.xp()


def float_dtype_of(value):
    """The floating dtype of ``value``, or float64 for integers and Python numbers."""
    data = raw(value)
    if backend.is_array(data) and data.dtype.kind == "f":
        return data.dtype
    return backend.host.float64


def as_timesteps(t, n: int, num_timesteps: int, like=None):
    """``t`` as an int64 array of shape (n,) on the backend of ``like``; an int is repeated.

    Raises ValueError when a timestep is outside [0, num_timesteps).
    """
    xp = xp_of(like) if like is not None else backend.xp()
    t = xp.asarray(raw(t))
    if t.ndim == 0:
        t = xp.full((n,), int(t), dtype=xp.int64)
    t = t.astype(xp.int64, copy=False).reshape(-1)
    if t.shape[0] != n:
        raise ValueError(f"t: expected shape ({n},) (one timestep per batch item), "
                         f"got shape {tuple(t.shape)}")
    if t.size and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
        raise ValueError(f"t: expected 0-based timesteps in [0, {num_timesteps - 1}] "
                         f"(index t is the paper's step t+1), got values in "
                         f"[{int(t.min())}, {int(t.max())}]")
    return t


def extract(values, t, like):
    """``values[t]`` shaped (N, 1, ..., 1) to broadcast against ``like`` (shape (N, ...)),
    in the floating dtype of ``like`` and on its backend."""
    data = raw(like)
    t = as_timesteps(t, data.shape[0], values.shape[0], like)
    out = backend.to_device(values, backend.backend_name_of(data))[t]
    return out.astype(float_dtype_of(like), copy=False).reshape((-1,) + (1,) * (data.ndim - 1))


def exp(value):
    """exp for arrays and Tensors (a Tensor keeps its graph)."""
    return value.exp() if isinstance(value, Tensor) else xp_of(value).exp(value)


def log(value):
    return value.log() if isinstance(value, Tensor) else xp_of(value).log(value)


def clip(value, low, high):
    if isinstance(value, Tensor):
        return value.clip(low, high)
    return xp_of(value).clip(value, low, high)


def mean_over_items(value):
    """Mean over every axis but the first: shape (N, ...) -> (N,)."""
    axes = tuple(range(1, raw(value).ndim))
    if not axes:
        return value
    return value.mean(axis=axes)
