"""minidiff's own threads (``minidiff.backend.threads``): every pass split among them gives
the same bits as one thread, and the BLAS is left on one thread only where minidiff loads it.

What each check would catch: a piece that misses or repeats items (``split``'s bounds); two
threads adding into the same memory (the strided convolution's col2im, whose chunks overlap
at their edges: a lost update changes dx); a thread's scratch buffer overwritten by another
(the per-thread ``_workspace`` blocks); dW summed in an order that depends on the threads.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidiff as md
from minidiff import backend
from minidiff.backend import threads
from minidiff.nn import functional as F
from minidiff.nn.functional import conv_fast


@pytest.fixture
def thread_count():
    """Set the thread count for a test and put it back afterwards."""
    before = threads.threads()
    yield threads.set_threads
    threads.set_threads(before)


# ----------------------------------------------------------------------------- split

@given(n=st.integers(1, 40), k=st.integers(1, 5), nbytes=st.sampled_from([0, 2 ** 20, 2 ** 26]))
def test_split_covers_every_item_once(n, k, nbytes):
    before = threads.threads()
    threads.set_threads(k)
    try:
        seen, lock = [], threading.Lock()

        def record(lo, hi):
            with lock:
                seen.append((lo, hi))
        threads.split(record, n, np.empty(nbytes, dtype=np.uint8))
    finally:
        threads.set_threads(before)
    seen.sort()
    assert seen[0][0] == 0 and seen[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))   # contiguous, no overlap
    assert len(seen) <= max(1, min(k, n, nbytes // threads.MIN_BYTES))


def test_split_stays_on_the_calling_thread_when_it_should(thread_count):
    thread_count(4)
    big = np.empty(4 * threads.MIN_BYTES, dtype=np.uint8)
    names = []
    threads.split(lambda lo, hi: names.append(threading.current_thread().name), 8, big)
    assert len(set(names)) == 4
    for array in (np.empty(threads.MIN_BYTES, dtype=np.uint8), [0] * 10 ** 6):
        names.clear()   # too small to split, or not a NumPy array
        threads.split(lambda lo, hi: names.append((lo, hi)), 8, array)
        assert names == [(0, 8)]
    inner = []          # a split inside a piece runs whole, where it was called

    def outer(lo, hi):
        threads.split(lambda a, b: inner.append((lo, a, b)), 6, big)
    threads.split(outer, 4, big)
    assert sorted(inner) == [(0, 0, 6), (1, 0, 6), (2, 0, 6), (3, 0, 6)]


def test_split_raises_what_a_piece_raised(thread_count):
    thread_count(2)

    def fail(lo, hi):
        if lo > 0:
            raise ZeroDivisionError("piece")
    with pytest.raises(ZeroDivisionError, match="piece"):
        threads.split(fail, 2, np.empty(4 * threads.MIN_BYTES, dtype=np.uint8))


def test_together_runs_every_part_once_at_the_same_time(thread_count):
    """Each part once, on as many threads as there are parts and threads, in order on one
    thread where the array is small or on one thread; None parts skipped; a part's error
    reaches the caller."""
    big, small = np.empty(threads.MIN_BYTES, np.uint8), np.empty(16, np.uint8)
    for k, array, distinct in ((3, big, 3), (2, big, 2), (1, big, 1), (3, small, 1)):
        thread_count(k)
        seen, lock = [], threading.Lock()

        def part(i):
            def run():
                with lock:
                    seen.append((i, threading.current_thread().name))
            return run
        threads.together([part(0), None, part(1), part(2)], array)
        assert sorted(i for i, _ in seen) == [0, 1, 2]
        assert len({name for _, name in seen}) == distinct
        if distinct == 1:
            assert [i for i, _ in seen] == [0, 1, 2]
    thread_count(2)

    def fail():
        raise KeyError("part")
    with pytest.raises(KeyError, match="part"):
        threads.together([lambda: None, fail], big)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_threads_refuses_what_is_not_a_count(bad):
    with pytest.raises(ValueError, match="set_threads: k must be an integer >= 1"):
        threads.set_threads(bad)


@given(shapes=st.sampled_from([((64, 8, 16, 16), (64, 8, 16, 16)), ((64, 8, 16, 16), (64, 8, 1, 1)),
                               ((1, 8, 16, 16), (64, 8, 16, 16)), ((64, 3000), (3000,)),
                               ((128, 2048), (1, 2048))]))
def test_binary_is_numpys_ufunc(shapes):
    before = threads.threads()
    threads.set_threads(3)
    try:
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
        for ufunc in (np.add, np.multiply):
            got = threads.binary(ufunc, a, b)
            assert got.dtype == ufunc(a, b).dtype
            np.testing.assert_array_equal(got, ufunc(a, b))
    finally:
        threads.set_threads(before)


# ----------------------------------------------------------------------------- same bits

def _conv_run(stride, kernel, bias, groups):
    backend.manual_seed(4)
    x = md.Tensor(backend.randn(24, 8, 16, 16), requires_grad=True)
    w = md.Tensor(backend.randn(12, 8 // groups, kernel, kernel), requires_grad=True)
    b = md.Tensor(backend.randn(12), requires_grad=True) if bias else None
    y = F.conv2d(x, w, b, stride=stride, padding=kernel // 2, groups=groups)
    (y * y).sum().backward()
    return [backend.to_host(a).copy() for a in
            [y.data, x.grad, w.grad] + ([b.grad] if bias else [])]


@pytest.mark.parametrize("chunk_bytes", [40_000, 2 ** 30])
@pytest.mark.parametrize("stride,kernel,bias,groups",
                         [(1, 3, True, 1), (2, 3, True, 1), (1, 1, True, 1), (1, 3, False, 2),
                          (2, 3, False, 1), (1, 5, True, 1)])
def test_convolution_gives_the_same_bits_on_any_number_of_threads(
        monkeypatch, thread_count, stride, kernel, bias, groups, chunk_bytes):
    """Small chunks (a few images each) so that every thread gets several, and the
    strided road's col2im adds across the edges between threads' images; and the whole
    batch as one chunk, where the input's and the weight's gradient products run at once
    (``threads.together``): a scratch buffer shared between them would change the bits."""
    monkeypatch.setattr(conv_fast, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(threads, "MIN_BYTES", 1024)
    road = conv_fast.road((24, 8, 16, 16), (12, 8 // groups, kernel, kernel), stride,
                          kernel // 2)
    assert road == {1: "pointwise", 3: "flat", 5: "flat"}[kernel] if stride == 1 else "phase"
    thread_count(1)
    one = _conv_run(stride, kernel, bias, groups)
    for k in (2, 3):
        thread_count(k)
        for a, b in zip(one, _conv_run(stride, kernel, bias, groups)):
            np.testing.assert_array_equal(a, b)


def test_network_layers_give_the_same_bits_on_any_number_of_threads(monkeypatch,
                                                                     thread_count):
    """silu, group norm, a sum of feature maps (and the gradient of a tensor used twice)
    forward and backward."""
    monkeypatch.setattr(threads, "MIN_BYTES", 1024)

    def run():
        backend.manual_seed(5)
        x = md.Tensor(backend.randn(16, 8, 12, 12), requires_grad=True)
        gamma = md.Tensor(backend.randn(8), requires_grad=True)
        beta = md.Tensor(backend.randn(8), requires_grad=True)
        h = F.group_norm(x, 4, gamma, beta)
        y = F.silu(h) + h * x + md.Tensor(backend.randn(16, 8, 1, 1))
        (y * y).sum().backward()
        return [backend.to_host(a).copy() for a in (y.data, x.grad, gamma.grad, beta.grad)]
    thread_count(1)
    one = run()
    thread_count(3)
    for a, b in zip(one, run()):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- the BLAS

def _python(code: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_minidiff_takes_the_cores_only_where_it_loads_numpy():
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                        "VECLIB_MAXIMUM_THREADS", "MINIDIFF_BACKEND")}
    report = ("from minidiff.backend import threads; import os; "
              "print(threads.BLAS_SINGLE_THREADED, threads.threads(), "
              "os.environ.get('OPENBLAS_NUM_THREADS'))")
    first = _python("import minidiff; " + report, dict(env, OMP_NUM_THREADS="3"))
    assert first == "True 3 None"          # the environment is given back as it was
    assert _python("import numpy, minidiff; " + report, env) == "False 1 None"
    assert _python("import minidiff; " + report,
                   dict(env, OPENBLAS_NUM_THREADS="1")) == "True 1 1"
