"""Reusable scratch buffers for the big temporaries of conv2d (lesson 05, "performance").

A fresh 60 MB array costs more than filling it: the operating system maps and zeroes its pages
on first touch.  Temporaries that never leave one call (the padded input, the GEMM output, the
column gradient) are therefore kept here, one per (purpose, shape, dtype, backend), and
reused.  ``clear()`` drops them all.  Not thread-safe (minidiff runs one graph at a time).
"""
from minidiff import backend

__all__ = ["buffer", "clear"]

_buffers = {}


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


def clear() -> None:
    """Forget every cached buffer (frees their memory)."""
    _buffers.clear()


def nbytes() -> int:
    """Total size of the cached buffers in bytes."""
    return sum(a.nbytes for a in _buffers.values())


del backend
