"""Reusable scratch memory for the big temporaries of conv2d (``conv_fast.py``, lesson 05).

A fresh 60 MB array costs more than filling it: the operating system maps and zeroes its pages
on first touch.  Temporaries that never leave one call (the GEMM output, the columns, the
padded input, the output gradient) are therefore cut from one reused block per purpose
(``tag``): every shape of a tag shares that block, grown to the largest request, so the scratch
memory is one copy per purpose, not one per layer shape.  A buffer is valid until the next
request for the same tag *from the same thread*: each thread (``backend.threads``) has blocks
of its own, so that the pieces of a convolution can run at once.  ``clear()`` drops them
all.  Nothing that the backward pass needs lives here: the convolutions keep
only their input and rebuild the rest.
"""
import math
import threading

__all__ = ["buffer", "clear", "nbytes"]

_blocks = {}


def buffer(tag: str, shape, dtype, xp):
    """An uninitialised scratch array of ``shape``, cut from the block of ``tag`` (which is
    reallocated, larger, when it is too small); valid until this thread's next
    ``buffer(tag, ...)``."""
    size = math.prod(shape)
    # not str(dtype), which took 5 us of a 6 us call
    key = (tag, dtype, xp.__name__, threading.get_ident())
    block = _blocks.get(key)
    if block is None or block.size < size:
        block = xp.empty(max(size, 1), dtype=dtype)
        _blocks[key] = block
    return block[:size].reshape(shape)


def clear() -> None:
    """Forget every cached buffer (frees their memory once no graph holds them)."""
    _blocks.clear()


def nbytes() -> int:
    """Total size of the cached buffers in bytes."""
    return sum(a.nbytes for a in _blocks.values())

