"""Properties of the autograd engine itself (``minidiff.tensor``): the chain rule, gradients
through broadcasting, accumulation, numerical stability, deep graphs, freeing, error messages,
no_grad, dtypes and seeding."""
import gc
import weakref

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidiff as md
from minidiff import backend
from tests import strategies as S


def leaf(array):
    return md.tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def host(array):
    return backend.to_host(array.data if isinstance(array, md.Tensor) else array)


def grad_of(fn, array, upstream=None):
    """d(sum(upstream * fn(x)))/dx at x = array, by backward (upstream defaults to ones)."""
    x = leaf(array)
    out = fn(x)
    out.backward(np.ones(out.shape) if upstream is None else backend.to_device(upstream))
    return host(x.grad)


# --------------------------------------------------------------------------- chain rule

ELEMENTWISE = {
    "exp": md.exp, "tanh": md.tanh, "sigmoid": md.sigmoid, "silu": md.silu, "gelu": md.gelu,
    "square": lambda t: t * t, "softplus-ish": lambda t: md.log(1 + md.exp(t)),
}


@given(f=st.sampled_from(sorted(ELEMENTWISE)), g=st.sampled_from(sorted(ELEMENTWISE)),
       x=S.arrays(S.shapes(), S.floats(-1.5, 1.5)))
def test_chain_rule_elementwise(f, g, x):
    """d g(f(x))/dx = g'(f(x)) * f'(x): each factor computed on its own, then multiplied."""
    f, g = ELEMENTWISE[f], ELEMENTWISE[g]
    whole = grad_of(lambda t: g(f(t)), x)
    inner = grad_of(f, x)                               # f'(x)
    y = host(f(leaf(x)))
    outer = grad_of(g, y)                               # g'(y) at y = f(x)
    np.testing.assert_allclose(whole, outer * inner, rtol=1e-10, atol=1e-12)


@given(data=st.data())
def test_chain_rule_with_jacobians(data):
    """For y = f(x) = softmax(W x) and L = g(y) = sum(c * log(y)):
    dL/dx = J_f(x)^T dL/dy, with J_f built row by row from separate backward passes."""
    n, m = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    w = data.draw(S.arrays((m, n)))
    c = data.draw(S.arrays((m,)))
    x = data.draw(S.arrays((n,)))
    weights = md.tensor(w)

    def f(t):
        return md.softmax(weights @ t)

    def g(t):
        return (md.tensor(c) * md.log(t)).sum()

    whole = grad_of(lambda t: g(f(t)), x)
    jacobian = np.stack([grad_of(f, x, upstream=np.eye(m)[i]) for i in range(m)])  # (m, n)
    y = host(f(leaf(x)))
    dl_dy = grad_of(g, y)
    np.testing.assert_allclose(whole, jacobian.T @ dl_dy, rtol=1e-9, atol=1e-12)


def test_shared_subexpression_gets_both_paths():
    """x feeds y twice (y = x * x + x): dy/dx = 2x + 1 sums the contributions of every path."""
    x = leaf([1.5, -2.0])
    ((x * x) + x).sum().backward()
    np.testing.assert_allclose(host(x.grad), [4.0, -3.0])


# --------------------------------------------------------------------------- broadcasting

def _tile(t, target_shape):
    """Copy ``t`` up to ``target_shape`` with stack / concatenate only (no broadcasting)."""
    for _ in range(len(target_shape) - t.ndim):
        t = md.stack([t], axis=0)
    for axis, size in enumerate(target_shape):
        if t.shape[axis] == 1 and size != 1:
            t = md.concatenate([t] * size, axis=axis)
    return t


@given(data=st.data())
def test_broadcast_gradient_equals_explicit_tiling(data):
    """The gradient that reaches a broadcast operand is the sum of the gradients of its
    copies: compare ``a * b`` (broadcasting) with ``tile(a) * tile(b)`` (explicit copies)."""
    a_array, b_array = data.draw(S.broadcast_pair())
    target = np.broadcast_shapes(a_array.shape, b_array.shape)
    w = backend.to_device(data.draw(S.arrays(target)))

    a1, b1 = leaf(a_array), leaf(b_array)
    (a1 * b1 * w).sum().backward()
    a2, b2 = leaf(a_array), leaf(b_array)
    (_tile(a2, target) * _tile(b2, target) * w).sum().backward()

    assert a1.grad.shape == a_array.shape and b1.grad.shape == b_array.shape
    np.testing.assert_allclose(host(a1.grad), host(a2.grad), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(b1.grad), host(b2.grad), rtol=1e-12, atol=1e-12)


def test_broadcast_bias_gradient_is_a_column_sum():
    bias = leaf([0.0, 0.0, 0.0])
    x = md.tensor(np.arange(12.0).reshape(4, 3))
    (x + bias).sum().backward()
    np.testing.assert_array_equal(host(bias.grad), [4.0, 4.0, 4.0])


# --------------------------------------------------------------------------- accumulation

def test_gradients_accumulate_across_backward_calls():
    x = leaf([0.5, -1.0, 2.0])
    (x * x).sum().backward()
    first = host(x.grad).copy()
    (x * x).sum().backward()            # a fresh graph: adds to .grad
    np.testing.assert_allclose(first, 2 * np.array([0.5, -1.0, 2.0]))
    np.testing.assert_allclose(host(x.grad), 2 * first)
    x.zero_grad()
    assert x.grad is None


def test_retain_graph_allows_a_second_backward_that_accumulates():
    x = leaf([1.0, 2.0])
    loss = (md.exp(x)).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(host(x.grad), 2 * np.exp([1.0, 2.0]))


def test_second_backward_through_freed_graph_raises():
    x = leaf([1.0, 2.0])
    loss = (x * 3).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()
    np.testing.assert_allclose(host(x.grad), [3.0, 3.0])  # untouched by the failed call


# --------------------------------------------------------------------------- stability

EXTREMES = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0],
                     [-1e4, -1e4, -1e4, -1e4],
                     [1e4, 1e4, -1e4 + 3.0, 2.5]])


def _reference_log_softmax(a, axis=-1):
    a = a.astype(np.float64)
    shifted = a - a.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_stable_at_large_inputs(dtype, axis):
    x = md.tensor(EXTREMES, dtype=dtype, requires_grad=True)
    p = md.softmax(x, axis=axis)
    logp = md.log_softmax(x, axis=axis)
    tol = 1e-6 if dtype == "float32" else 1e-12
    assert np.isfinite(host(p)).all() and np.isfinite(host(logp)).all()
    np.testing.assert_allclose(host(p).sum(axis=axis), 1.0, atol=tol)
    reference = _reference_log_softmax(EXTREMES, axis)
    np.testing.assert_allclose(host(p), np.exp(reference), atol=tol)
    finite = reference > -1e3   # log p = -2e4 is exact in float64 and fine in float32 too
    np.testing.assert_allclose(host(logp)[finite], reference[finite], atol=tol * 10)
    np.testing.assert_allclose(host(logp), reference, rtol=1e-6)
    (p * md.tensor(np.arange(12.0).reshape(3, 4), dtype=dtype)).sum().backward()
    (logp[0, 0] + logp[2, 3]).backward()
    assert np.isfinite(host(x.grad)).all()


@given(x=S.arrays(S.shapes(min_dims=1), S.floats(-1e4, 1e4)))
def test_softmax_stable_hypothesis(x):
    p = host(md.softmax(md.tensor(x)))            # float32, the default dtype
    logp = host(md.log_softmax(md.tensor(x)))
    # the float64 reference starts from the same float32-rounded inputs (at 1e4 one float32
    # step is ~1e-3, which alone would move p by more than the tolerance)
    reference = _reference_log_softmax(x.astype(np.float32))
    assert np.isfinite(p).all() and np.isfinite(logp).all()
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p, np.exp(reference), atol=1e-5)
    np.testing.assert_allclose(logp, reference, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_silu_finite_and_exact_at_large_inputs(dtype):
    """silu = x / (1 + e^-x) caps -x before the exp: no overflow (warnings are errors here),
    silu(-1e4) = 0 and silu(1e4) = 1e4 to the dtype's tiny, and the gradient
    s (1 + x (1 - s)) matches a float64 reference evaluated without the cap."""
    import warnings
    x = md.tensor(EXTREMES, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = md.silu(x)
        y.sum().backward()
    a = host(x.data).astype(np.float64)
    with np.errstate(over="ignore"):
        s = 1 / (1 + np.exp(-a))
    tiny = np.finfo(dtype).tiny
    np.testing.assert_allclose(host(y), a * s, rtol=1e-6, atol=1e4 * tiny)
    np.testing.assert_allclose(host(x.grad), s * (1 + a * (1 - s)), rtol=1e-6, atol=1e4 * tiny)
    # near 0 the backward pass cannot read sigmoid off out / x (subnormal x loses its digits
    # in out = x s; 0 / 0 at x = 0): the slope there is 1/2
    info = np.finfo(dtype)
    small = md.tensor(np.array([info.smallest_subnormal, -info.smallest_subnormal, info.tiny,
                                0.0, info.eps / 2]), dtype=dtype, requires_grad=True)
    md.silu(small).sum().backward()
    np.testing.assert_allclose(host(small.grad), 0.5, rtol=info.eps)


# --------------------------------------------------------------------------- deep graphs, memory

def test_ten_thousand_op_chain_backward_without_recursion_error():
    x = leaf(1.0)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(host(x.grad), 1.0001 ** 10_000, rtol=1e-9)


def test_intermediate_buffers_freed_after_backward():
    x = leaf(np.linspace(-1, 1, 6))
    hidden = md.tanh(x * 2.0)
    probe = weakref.ref(hidden)
    loss = (hidden * hidden).sum()
    del hidden
    gc.collect()
    assert probe() is not None, "the graph keeps the intermediate alive before backward"
    assert loss._backward is not None and loss._parents
    loss.backward()
    gc.collect()
    assert probe() is None, "backward() should release the intermediate tensor"
    assert loss._parents == ()
    assert x.grad is not None


def test_retain_graph_keeps_intermediates():
    x = leaf([1.0, 2.0])
    hidden = md.exp(x)
    probe = weakref.ref(hidden)
    loss = hidden.sum()
    del hidden
    loss.backward(retain_graph=True)
    gc.collect()
    assert probe() is not None


# --------------------------------------------------------------------------- errors

def test_requires_grad_on_integer_dtype_is_refused():
    with pytest.raises(TypeError, match="floating"):
        md.tensor([1, 2, 3], requires_grad=True)
    assert md.tensor([1, 2, 3]).dtype.kind == "i"


def test_backward_on_non_scalar_needs_grad():
    x = leaf([1.0, 2.0])
    y = x * 2
    with pytest.raises(RuntimeError, match=r"scalar output, got shape \(2,\)"):
        y.backward()
    y.backward(np.array([1.0, 10.0]))
    np.testing.assert_allclose(host(x.grad), [2.0, 20.0])


def test_backward_grad_of_wrong_shape():
    y = leaf([1.0, 2.0]) * 2
    with pytest.raises(ValueError, match="expected shape"):
        y.backward(np.ones(3))


def test_backward_without_requires_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        md.tensor([1.0]).sum().backward()


@pytest.mark.parametrize("shape_a,shape_b", [((2, 3), (4, 5)), ((3,), (4, 2)), ((2, 3), (2,))])
def test_matmul_shape_mismatch_names_both_shapes(shape_a, shape_b):
    a, b = md.tensor(np.ones(shape_a)), md.tensor(np.ones(shape_b))
    with pytest.raises(ValueError, match="matmul") as info:
        a @ b
    assert str(shape_a) in str(info.value) and str(shape_b) in str(info.value)


def test_matmul_of_0d_is_refused():
    with pytest.raises(ValueError, match="at least 1 dimension"):
        md.tensor(2.0) @ md.tensor([1.0])


@pytest.mark.cupy
def test_mixing_numpy_and_cupy_raises_backend_mismatch():
    on_host = md.tensor([1.0, 2.0]).to("numpy")
    on_gpu = md.tensor([1.0, 2.0]).to("cupy")
    for make in (lambda: on_host + on_gpu, lambda: on_gpu * on_host.data,
                 lambda: md.concatenate([on_host, on_gpu]), lambda: on_host @ on_gpu):
        with pytest.raises(md.BackendMismatchError) as info:
            make()
        assert "numpy" in str(info.value) and "cupy" in str(info.value)


def test_check_same_backend_accepts_one_backend():
    from minidiff.ops._inputs import check_same_backend
    x = md.tensor([1.0])
    check_same_backend("add", x, x.data, 3.0, None)  # must not raise
    assert issubclass(md.BackendMismatchError, TypeError)


# --------------------------------------------------------------------------- no_grad

def test_no_grad_builds_no_graph():
    x = leaf([1.0, 2.0])
    with md.no_grad():
        assert not md.is_grad_enabled()
        y = (x * 2).exp().sum()
    assert md.is_grad_enabled()
    assert not y.requires_grad and y._parents == () and y._backward is None
    with pytest.raises(RuntimeError):
        y.backward()
    z = (x * 2).sum()
    assert z.requires_grad and z._parents


def test_no_grad_nests_and_restores_on_error():
    with pytest.raises(KeyError):
        with md.no_grad():
            with md.no_grad():
                pass
            assert not md.is_grad_enabled()
            raise KeyError("boom")
    assert md.is_grad_enabled()


def test_constants_build_no_graph():
    y = md.tensor([1.0]) * 3 + 1
    assert not y.requires_grad and y._backward is None


def test_detach_cuts_the_graph():
    x = leaf([1.0, 2.0])
    y = (x * 3).detach()
    assert not y.requires_grad
    np.testing.assert_allclose(host(y), [3.0, 6.0])


# --------------------------------------------------------------------------- dtype, seeds

def test_default_dtype_float32_and_switchable():
    assert md.default_dtype() == np.float32
    assert md.tensor([1.0, 2.0]).dtype == np.float32
    assert (md.tensor([1.0]) * 2.5).dtype == np.float32
    md.set_default_dtype("float64")
    try:
        assert md.tensor([1.0, 2.0]).dtype == np.float64
        assert md.tensor(0.5).dtype == np.float64
    finally:
        md.set_default_dtype("float32")
    assert md.tensor([1.0]).dtype == np.float32
    md.set_default_dtype(np.float64)
    assert md.default_dtype() == np.float64
    md.set_default_dtype(np.float32)
    with pytest.raises(ValueError, match="float16"):
        md.set_default_dtype("float16")


def test_manual_seed_reproducible():
    md.manual_seed(123)
    first = host(backend.randn(3, 4)), host(backend.rand(5)), host(backend.randint(0, 9, (6,)))
    md.manual_seed(123)
    second = host(backend.randn(3, 4)), host(backend.rand(5)), host(backend.randint(0, 9, (6,)))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    md.manual_seed(124)
    assert not np.array_equal(host(backend.randn(3, 4)), first[0])
    assert backend.randn(2, dtype="float64").dtype == np.float64
    assert backend.randn(2).dtype == np.float32


def test_rng_state_round_trip():
    md.manual_seed(7)
    backend.randn(10)
    state = backend.get_rng_state()
    assert isinstance(state, str)
    after = host(backend.randn(5))
    assert not np.array_equal(after, host(backend.randn(5)))   # the stream moves on
    backend.set_rng_state(state)
    np.testing.assert_array_equal(host(backend.randn(5)), after)
