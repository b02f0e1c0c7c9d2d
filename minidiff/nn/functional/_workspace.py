"""Reusable scratch buffers for the big temporaries of conv2d (lesson 05, "performance").

A fresh 60 MB array costs more than filling it: the operating system maps and zeroes its pages
on first touch.  Temporaries that never leave one call (the padded input, the GEMM output, the
column gradient) are therefore kept here, one per (purpose, shape, dtype, backend), and
reused.  ``clear()`` drops them all.  Not thread-safe (minidiff runs one graph at a time).

Arrays that *do* outlive the call -- the im2col columns, which the backward pass needs -- come
from ``pooled``: a small pool per shape, and an array is handed out again only once nobody
else holds a reference to it (``sys.getrefcount``), i.e. once its graph has been used by
backward, or was never recorded (under ``no_grad``).
"""
import sys

__all__ = ["buffer", "pooled", "clear", "nbytes"]

_buffers = {}
_pools = {}
POOL_SIZE = 4


def buffer(tag, shape, dtype, xp, zeros: bool = False):
    """A cached array of ``shape``; ``zeros`` zero-fills it only when it is first made, so a
    caller that writes just the interior keeps zero borders for free -- ``tag`` must then
    name everything that decides where the interior is."""
    key = (tag, tuple(shape), str(dtype), xp.__name__)
    array = _buffers.get(key)
    if array is None:
        array = xp.zeros(shape, dtype=dtype) if zeros else xp.empty(shape, dtype=dtype)
        _buffers[key] = array
    return array


def pooled(tag, shape, dtype, xp):
    """An uninitialised array of ``shape`` that no one else references (reused when possible,
    else freshly made and, while the pool has room, remembered)."""
    key = (tag, tuple(shape), str(dtype), xp.__name__)
    pool = _pools.setdefault(key, [])
    for i in range(len(pool)):
        if sys.getrefcount(pool[i]) == 2:  # held only by the pool (and this call's argument)
            return pool[i]
    array = xp.empty(shape, dtype=dtype)
    if len(pool) < POOL_SIZE:
        pool.append(array)
    return array


def clear() -> None:
    """Forget every cached buffer (frees their memory once no graph holds them)."""
    _buffers.clear()
    _pools.clear()


def nbytes() -> int:
    """Total size of the cached buffers in bytes."""
    return (sum(a.nbytes for a in _buffers.values()) +
            sum(a.nbytes for pool in _pools.values() for a in pool))

