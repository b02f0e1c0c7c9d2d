"""minidiff's own threads: work shared out among the CPU's cores (the NumPy backend).

NumPy runs a ufunc or a copy on one core; its BLAS runs a matrix product on every core, but
the U-Net's products are many and small (a few images' columns at a time), and its copies
and elementwise passes stay on one core between them.  So minidiff shares out the work
itself, as a framework's intra-op threads do: ``split(fn, n, array)`` cuts a pass into
contiguous pieces fn(lo, hi) along an axis of n items of an array (images, chunks of images,
or the elements of a flat array) and runs them at the same time, one per thread -- NumPy and
BLAS release the GIL while they work.  Each piece writes its own part of the output, so the
result is the same bits as one call, whatever the number of threads: a run is reproducible
across thread counts.

Then BLAS itself must run on one thread, or its workers and these fight for the cores (two
threads each calling a two-thread OpenBLAS ran the convolutions' GEMMs at half the speed of
one).  BLAS libraries read their thread count once, when they load: so when minidiff is
imported before NumPy (the ``minidiff`` command, a script that imports minidiff first), it
loads NumPy with OPENBLAS_NUM_THREADS (and MKL's, Accelerate's, OpenMP's) set to 1 and then
gives the environment back as it was, and ``threads()`` is the number of threads the user
asked of BLAS (OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS, else the CPUs this process may
run on).  When NumPy was imported first, its BLAS keeps its own threads and ``threads()`` is
1.  ``set_threads(k)`` changes it either way.

Where a pass has too few items to share out (a convolution whose whole batch is one chunk
of columns), ``together([f, g], array)`` runs independent parts of it at once instead:
the weight gradient's product and the input gradient's, say.  Each part is still one call on
one thread, so this too gives the same bits on any number of threads.

With one thread, for an array that is not NumPy's (a device backend's), for a pass of less
than ``MIN_BYTES`` a piece (handing a piece to a thread costs some 20-50 us), or inside
another piece, ``split`` simply calls fn(0, n), and ``together`` calls its parts in order.
"""
from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading

__all__ = ["split", "together", "binary", "threads", "set_threads", "using", "MIN_BYTES",
           "BLAS_SINGLE_THREADED"]

_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                          "VECLIB_MAXIMUM_THREADS", "OMP_NUM_THREADS")


def _threads_from_environment() -> int:
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(key, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def _restore(saved: dict) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_WISH = _threads_from_environment()
#: whether NumPy's BLAS was loaded on one thread (minidiff imported before NumPy), so that
#: minidiff's threads have the cores to themselves
BLAS_SINGLE_THREADED = "numpy" not in sys.modules
_saved = {key: os.environ.get(key) for key in _BLAS_THREAD_VARIABLES}
if BLAS_SINGLE_THREADED:
    os.environ.update(dict.fromkeys(_BLAS_THREAD_VARIABLES, "1"))
try:
    import numpy  # noqa: E402  (the BLAS reads its thread count here)
finally:
    _restore(_saved)   # the environment as it was, for the processes this one starts

#: the smallest piece worth a thread of its own, in bytes of the array it covers
MIN_BYTES = 256 * 2 ** 10

_state = {"threads": _WISH if BLAS_SINGLE_THREADED else 1}
_workers = []          # the threads besides the caller's, started when first needed
_inside = threading.local()


def threads() -> int:
    """How many threads ``split`` uses at most."""
    return _state["threads"]


def set_threads(k: int) -> None:
    """Use at most ``k`` threads (1: every pass on the calling thread)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"set_threads: k must be an integer >= 1, got {k!r}")
    _state["threads"] = k


@contextlib.contextmanager
def using(k: int):
    """``set_threads(k)`` for the duration of a ``with`` block."""
    before = threads()
    set_threads(k)
    try:
        yield
    finally:
        set_threads(before)


class _Piece:
    """fn(lo, hi), to be run on a worker; ``wait()`` returns once it has, raising what it
    raised."""

    def __init__(self, fn, lo: int, hi: int):
        self.fn, self.lo, self.hi = fn, lo, hi
        self.error = None
        self.done = threading.Event()

    def run(self) -> None:
        _inside.active = True
        try:
            self.fn(self.lo, self.hi)
        except BaseException as error:   # handed to the caller by wait()
            self.error = error
        finally:
            _inside.active = False
            self.done.set()

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


def _work(tasks: queue.SimpleQueue) -> None:
    while True:
        tasks.get().run()


def _worker(i: int) -> queue.SimpleQueue:
    """The task queue of worker i (0-based), each worker a thread of its own, so that k
    pieces always run at once."""
    while len(_workers) <= i:
        tasks = queue.SimpleQueue()
        threading.Thread(target=_work, args=(tasks,), name=f"minidiff-{len(_workers)}",
                         daemon=True).start()
        _workers.append(tasks)
    return _workers[i]


def _fork_join(fn, bounds) -> None:
    """fn(bounds[i], bounds[i + 1]) for each i at the same time: the first on the calling
    thread, the others on workers; returns once all have, raising what one raised."""
    others = [_Piece(fn, bounds[i], bounds[i + 1]) for i in range(1, len(bounds) - 1)]
    for i, piece in enumerate(others):
        _worker(i).put(piece)
    mine = _Piece(fn, bounds[0], bounds[1])
    mine.run()
    for piece in others:   # every piece ends before the outputs are read
        piece.wait()
    mine.wait()


def split(fn, n: int, array) -> None:
    """Run fn(lo, hi) over [0, n) in contiguous pieces, one per thread, and wait for all of
    them.  ``array`` is the array whose n items are split (an axis of it): no piece covers
    less than ``MIN_BYTES`` of it.  fn must write only its own items' part of its outputs."""
    if type(array) is not numpy.ndarray:
        fn(0, n)
        return
    k = min(_state["threads"], n, array.nbytes // MIN_BYTES)
    if k <= 1 or getattr(_inside, "active", False):
        fn(0, n)
        return
    _fork_join(fn, [n * i // k for i in range(k + 1)])


def together(parts, array) -> None:
    """Run the callables ``parts`` (no arguments; None entries are skipped) at the same time,
    one per thread, and wait for all of them; in order on the calling thread with one thread,
    inside a piece, or where ``array`` (what the parts work on) is not NumPy's or is less
    than ``MIN_BYTES``.  No two parts may write to the same memory."""
    parts = [part for part in parts if part is not None]
    k = min(_state["threads"], len(parts))
    if (k <= 1 or type(array) is not numpy.ndarray or array.nbytes < MIN_BYTES
            or getattr(_inside, "active", False)):
        for part in parts:
            part()
        return

    def run(lo, hi):
        for part in parts[lo:hi]:
            part()
    _fork_join(run, [len(parts) * i // k for i in range(k + 1)])


def binary(ufunc, a, b):
    """ufunc(a, b) with NumPy's broadcasting (the sum of two feature maps, say), computed in
    pieces along the first axis by ``split`` where a and b have as many axes; otherwise
    ufunc(a, b) as it is."""
    if not (type(a) is numpy.ndarray and type(b) is numpy.ndarray and a.ndim == b.ndim > 0):
        return ufunc(a, b)
    out = numpy.empty(numpy.broadcast_shapes(a.shape, b.shape), numpy.result_type(a, b))
    whole_a, whole_b = a.shape[0] == 1, b.shape[0] == 1

    def piece(lo, hi):
        ufunc(a if whole_a else a[lo:hi], b if whole_b else b[lo:hi], out=out[lo:hi])
    split(piece, out.shape[0], out)
    return out
