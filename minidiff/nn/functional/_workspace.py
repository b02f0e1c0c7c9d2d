"""Reusable scratch memory for the big temporaries of conv2d (``conv.py``, lesson 05).

A fresh 60 MB array costs more than filling it: the operating system maps and zeroes its pages
on first touch.  Temporaries that never leave one call (the GEMM output, the columns, the
padded input, the output gradient) are therefore cut from one reused block per purpose
(``tag``): every shape of a tag shares that block, grown to the largest request, so the scratch
memory is one copy per purpose, not one per layer shape.  A buffer is valid until the next
request for the same tag.  ``clear()`` drops them all.  Not thread-safe (minidiff runs one
graph at a time).

Arrays that *do* outlive the call -- what the backward pass needs, such as the columns of a
strided convolution -- come from ``pooled``: a small pool per shape, and an array is handed
out again only once nobody else holds a reference to it (``sys.getrefcount``), i.e. once its
graph has been used by backward, or was never recorded (under ``no_grad``).
"""
import math
import sys

__all__ = ["buffer", "pooled", "clear", "nbytes"]

_blocks = {}
_pools = {}
POOL_SIZE = 4


def buffer(tag: str, shape, dtype, xp):
    """An uninitialised scratch array of ``shape``, cut from the block of ``tag`` (which is
    reallocated, larger, when it is too small); valid until the next ``buffer(tag, ...)``."""
    size = math.prod(shape)
    key = (tag, dtype, xp.__name__)   # not str(dtype), which took 5 us of a 6 us call
    block = _blocks.get(key)
    if block is None or block.size < size:
        block = xp.empty(max(size, 1), dtype=dtype)
        _blocks[key] = block
    return block[:size].reshape(shape)


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
    _blocks.clear()
    _pools.clear()


def nbytes() -> int:
    """Total size of the cached buffers in bytes."""
    return (sum(a.nbytes for a in _blocks.values()) +
            sum(a.nbytes for pool in _pools.values() for a in pool))

