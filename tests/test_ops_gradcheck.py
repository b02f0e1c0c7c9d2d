"""Every differentiable op: the forward value matches NumPy, and ``backward`` matches central
finite differences (``minidiff.gradcheck.gradcheck``, float64) over hypothesis-drawn shapes,
axes and broadcast patterns.

Inputs stay away from points where an op is not differentiable (|x| and relu at 0, clip at
its limits, max with ties, log and sqrt at 0), since finite differences are wrong there.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidiff as md
from minidiff import backend
from minidiff.gradcheck import GradcheckError, gradcheck
from tests import strategies as S


def leaf(array):
    return md.tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def const(array):
    return md.tensor(np.asarray(array, dtype=np.float64))


def host(t):
    return backend.to_host(t.data)


def check(fn, *arrays, reference=None, needs_grad=None):
    """gradcheck ``fn`` on float64 leaves made of ``arrays``; compare the forward value with
    ``reference(*arrays)`` (NumPy) when given."""
    needs_grad = needs_grad or [True] * len(arrays)
    inputs = [leaf(a) if g else const(a) for a, g in zip(arrays, needs_grad)]
    if reference is not None:
        out = fn(*inputs)
        expected = np.asarray(reference(*arrays))
        assert out.shape == expected.shape
        np.testing.assert_allclose(host(out), expected, rtol=1e-10, atol=1e-12)
    assert gradcheck(fn, *inputs)


# --------------------------------------------------------------------------- the checker works

def test_gradcheck_catches_a_wrong_backward():
    """A backward that is off by a factor must be reported, or the checks below mean nothing."""
    x = leaf([0.3, -0.7, 1.1])

    def wrong_square(t):
        return md.Tensor._make(t.data ** 2, (t,), lambda g: (g * t.data,), "wrong_square")
    with pytest.raises(GradcheckError, match="wrong at"):
        gradcheck(wrong_square, x)


def test_gradcheck_perturbs_non_contiguous_inputs():
    """A transposed view must still be perturbed in place (reshape(-1) of it is a copy)."""
    x = md.tensor(np.arange(6.0).reshape(3, 2).T / 4, requires_grad=True)
    assert not x.data.flags.c_contiguous
    assert gradcheck(lambda t: t * t, x)


def test_gradcheck_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(md.exp, md.tensor([1.0, 2.0], requires_grad=True))


# --------------------------------------------------------------------------- binary, broadcasting

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "pow": (lambda a, b: a ** b, np.power),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data())
def test_binary_broadcast(name, data):
    fn, reference = BINARY[name]
    positive = S.floats(0.5, 2.0)
    elements_a = positive if name == "pow" else S.floats()
    elements_b = S.away_from_zero(0.5, 2.0) if name == "div" else S.floats()
    a, b = data.draw(S.broadcast_pair(elements_a, elements_b))
    grads = data.draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    check(fn, a, b, reference=reference, needs_grad=grads)


@pytest.mark.parametrize("name", ["radd", "rsub", "rmul", "rdiv", "rpow"])
@given(x=S.arrays(S.shapes(), S.floats(0.5, 2.0)), c=S.floats(0.5, 2.0))
def test_python_scalar_on_either_side(name, x, c):
    fn, reference = {
        "radd": (lambda t: c + t, lambda a: c + a),
        "rsub": (lambda t: c - t, lambda a: c - a),
        "rmul": (lambda t: c * t, lambda a: c * a),
        "rdiv": (lambda t: c / t, lambda a: c / a),
        "rpow": (lambda t: c ** t, lambda a: c ** a),
    }[name]
    check(fn, x, reference=reference)


@given(x=S.arrays(S.shapes()))
def test_neg(x):
    check(lambda t: -t, x, reference=np.negative)


@given(x=S.arrays(S.shapes(), S.floats(0.5, 2.0)),
       exponent=st.sampled_from([2, 3, -1, 0.5, -1.5, 2.5]))
def test_pow_scalar_exponent(x, exponent):
    check(lambda t: t ** exponent, x, reference=lambda a: a ** exponent)


@given(x=S.arrays(S.shapes(), S.floats(-2.0, 2.0)), exponent=st.sampled_from([1, 2, 3]))
def test_pow_integer_exponent_of_negative_base(x, exponent):
    check(lambda t: t ** exponent, x, reference=lambda a: a ** exponent)


# --------------------------------------------------------------------------- matmul

@st.composite
def matmul_operands(draw):
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    kind = draw(st.sampled_from(["batched", "vec@mat", "mat@vec", "vec@vec"]))
    if kind == "batched":
        batch_a, batch_b = draw(S.broadcastable_shapes(2, max_dims=2))
        shape_a, shape_b = batch_a + (n, k), batch_b + (k, m)
    elif kind == "vec@mat":
        shape_a, shape_b = (k,), draw(S.shapes(max_dims=1)) + (k, m)
    elif kind == "mat@vec":
        shape_a, shape_b = draw(S.shapes(max_dims=1)) + (n, k), (k,)
    else:
        shape_a, shape_b = (k,), (k,)
    return draw(S.arrays(shape_a)), draw(S.arrays(shape_b))


@given(operands=matmul_operands())
def test_matmul(operands):
    a, b = operands
    check(lambda x, y: x @ y, a, b, reference=np.matmul)
    check(md.matmul, a, b, reference=np.matmul, needs_grad=[True, False])


def test_matmul_with_numpy_array_operand():
    a, b = np.arange(6.0).reshape(2, 3), np.linspace(-1, 1, 12).reshape(3, 4)
    x = leaf(a)
    out = x @ backend.to_device(b)
    np.testing.assert_allclose(host(out), a @ b)
    assert gradcheck(lambda t: t @ backend.to_device(b), x)


# --------------------------------------------------------------------------- reductions

@pytest.mark.parametrize("name", ["sum", "mean", "var"])
@given(drawn=S.array_and_axis())
def test_reduction(name, drawn):
    x, axis, keepdims = drawn
    fn = getattr(md, name)
    check(lambda t: fn(t, axis=axis, keepdims=keepdims), x,
          reference=lambda a: getattr(np, name)(a, axis=axis, keepdims=keepdims))


@given(data=st.data())
def test_reduction_methods(data):
    x, axis, keepdims = data.draw(S.array_and_axis())
    name = data.draw(st.sampled_from(["sum", "mean", "var"]))
    check(lambda t: getattr(t, name)(axis, keepdims), x,
          reference=lambda a: getattr(np, name)(a, axis=axis, keepdims=keepdims))


@given(data=st.data())
def test_max_without_ties(data):
    x = data.draw(S.distinct_arrays())
    axis = data.draw(S.axes(x.ndim))
    keepdims = data.draw(st.booleans())
    check(lambda t: md.max(t, axis=axis, keepdims=keepdims), x,
          reference=lambda a: np.max(a, axis=axis, keepdims=keepdims))
    check(lambda t: t.max(axis, keepdims), x)


def test_max_ties_share_the_gradient():
    x = leaf([1.0, 3.0, 3.0, 2.0])
    x.max().backward()
    np.testing.assert_allclose(backend.to_host(x.grad), [0, 0.5, 0.5, 0])


# --------------------------------------------------------------------------- elementwise

UNARY = {
    "exp": (md.exp, np.exp, S.floats()),
    "log": (md.log, np.log, S.floats(0.2, 3.0)),
    "sqrt": (md.sqrt, np.sqrt, S.floats(0.2, 3.0)),
    "abs": (md.abs, np.abs, S.away_from_zero()),
    "tanh": (md.tanh, np.tanh, S.floats(-3.0, 3.0)),
    "sigmoid": (md.sigmoid, lambda a: 1 / (1 + np.exp(-a)), S.floats(-5.0, 5.0)),
    "relu": (md.relu, lambda a: np.maximum(a, 0), S.away_from_zero()),
    "silu": (md.silu, lambda a: a / (1 + np.exp(-a)), S.floats(-4.0, 4.0)),
    "gelu": (md.gelu, lambda a: 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi)
                                                      * (a + 0.044715 * a ** 3))),
             S.floats(-4.0, 4.0)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data())
def test_unary(name, data):
    fn, reference, elements = UNARY[name]
    x = data.draw(S.arrays(S.shapes(), elements))
    check(fn, x, reference=reference)
    method = getattr(md.Tensor, name, None)
    if method is not None:
        check(method, x, reference=reference)


def test_gelu_is_close_to_exact_gelu():
    from math import erf, sqrt
    grid = np.linspace(-4, 4, 81)
    exact = np.array([0.5 * v * (1 + erf(v / sqrt(2))) for v in grid])
    assert np.max(np.abs(host(md.gelu(const(grid))) - exact)) < 1e-3


@given(data=st.data())
def test_clip(data):
    low, high = -0.5, 0.7
    x = data.draw(S.arrays(S.shapes(), S.away_from([low, high], low=-1.5, high=1.5)))
    check(lambda t: md.clip(t, low, high), x, reference=lambda a: np.clip(a, low, high))
    check(lambda t: t.clip(low, None), x, reference=lambda a: np.clip(a, low, None))
    check(lambda t: t.clip(None, high), x, reference=lambda a: np.clip(a, None, high))


@given(data=st.data())
def test_where(data):
    shape_c, shape_a, shape_b = data.draw(S.broadcastable_shapes(3))
    condition = data.draw(S.arrays(shape_c)) > 0
    a, b = data.draw(S.arrays(shape_a)), data.draw(S.arrays(shape_b))
    check(lambda x, y: md.where(backend.to_device(condition), x, y), a, b,
          reference=lambda x, y: np.where(condition, x, y))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(data=st.data())
def test_softmax_family(name, data):
    shape = data.draw(S.shapes(min_dims=1))
    x = data.draw(S.arrays(shape, S.floats(-3.0, 3.0)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))

    def reference(a):
        shifted = a - a.max(axis=axis, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        return np.exp(logp) if name == "softmax" else logp
    check(lambda t: getattr(md, name)(t, axis=axis), x, reference=reference)


# --------------------------------------------------------------------------- shape ops

@given(data=st.data())
def test_reshape(data):
    x = data.draw(S.arrays(S.shapes()))
    size = x.size
    target = data.draw(st.sampled_from([(size,), (1, size), (size, 1), (-1,), x.shape[::-1]]))
    check(lambda t: t.reshape(target), x, reference=lambda a: a.reshape(target))
    check(lambda t: t.reshape(*target), x, reference=lambda a: a.reshape(target))


@given(data=st.data())
def test_transpose_and_permute(data):
    x = data.draw(S.arrays(S.shapes()))
    perm = tuple(data.draw(st.permutations(range(x.ndim))))
    check(lambda t: md.transpose(t, perm), x, reference=lambda a: np.transpose(a, perm))
    check(lambda t: t.permute(*perm) if perm else t.permute(), x,
          reference=lambda a: np.transpose(a, perm))
    check(lambda t: t.T, x, reference=lambda a: a.T)
    negative = tuple(p - x.ndim for p in perm)
    check(lambda t: t.transpose(negative), x, reference=lambda a: np.transpose(a, perm))


@st.composite
def basic_index(draw, shape):
    parts = []
    for size in shape[:draw(st.integers(0, len(shape)))]:
        kind = draw(st.sampled_from(["int", "slice", "step"]))
        if kind == "int":
            parts.append(draw(st.integers(-size, size - 1)))
        elif kind == "slice":
            start = draw(st.integers(0, size - 1))
            parts.append(slice(start, draw(st.integers(start + 1, size))))
        else:
            parts.append(slice(None, None, draw(st.sampled_from([-1, 2]))))
    return tuple(parts)


@given(data=st.data())
def test_basic_indexing(data):
    x = data.draw(S.arrays(S.shapes(min_dims=1)))
    index = data.draw(basic_index(x.shape))
    check(lambda t: t[index], x, reference=lambda a: a[index])


@given(data=st.data())
def test_integer_array_indexing_with_repeats(data):
    x = data.draw(S.arrays(S.shapes(min_dims=1)))
    n = x.shape[0]
    picks = data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=5))
    picks = picks + [picks[0]]  # at least one repeated position: its gradient must add up
    index = np.asarray(picks)
    form = data.draw(st.sampled_from(["array", "list", "tensor", "tuple"]))
    if form == "array":
        fn = lambda t: t[backend.to_device(index)]  # noqa: E731
    elif form == "list":
        fn = lambda t: t[picks]  # noqa: E731
    elif form == "tensor":
        fn = lambda t: t[md.tensor(backend.to_device(index))]  # noqa: E731
    else:
        fn = lambda t: t[(backend.to_device(index),) + (slice(None),) * (x.ndim - 1)]  # noqa
    check(fn, x, reference=lambda a: a[index])


@given(data=st.data())
def test_mask_ellipsis_and_newaxis_indexing(data):
    x = data.draw(S.arrays(S.shapes(min_dims=2, max_dims=2)))
    mask = data.draw(S.arrays(x.shape)) > 0
    rows = np.asarray(data.draw(st.lists(st.integers(0, x.shape[0] - 1), min_size=1,
                                         max_size=4)))
    cols = np.asarray(data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=len(rows),
                                         max_size=len(rows))))
    for index in [mask, (Ellipsis, -1), (None, slice(0, 2)), (rows, cols)]:
        device_index = (tuple(backend.to_device(i) if isinstance(i, np.ndarray) else i
                              for i in index) if isinstance(index, tuple)
                        else backend.to_device(index))
        check(lambda t: t[device_index], x, reference=lambda a: a[index])


def test_repeated_index_gradient_counts_each_pick():
    x = leaf([10.0, 20.0, 30.0])
    x[[0, 2, 0, 0]].sum().backward()
    np.testing.assert_array_equal(backend.to_host(x.grad), [3.0, 0.0, 1.0])


@given(data=st.data())
def test_concatenate(data):
    base = data.draw(S.shapes(min_dims=1))
    axis = data.draw(st.integers(-len(base), len(base) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    arrays = []
    for size in sizes:
        shape = list(base)
        shape[axis] = size
        arrays.append(data.draw(S.arrays(tuple(shape))))
    check(lambda *ts: md.concatenate(list(ts), axis=axis), *arrays,
          reference=lambda *a: np.concatenate(a, axis=axis))


@given(data=st.data())
def test_stack(data):
    shape = data.draw(S.shapes())
    count = data.draw(st.integers(1, 3))
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    arrays = [data.draw(S.arrays(shape)) for _ in range(count)]
    check(lambda *ts: md.stack(ts, axis=axis), *arrays,
          reference=lambda *a: np.stack(a, axis=axis))


@given(data=st.data())
def test_pad(data):
    x = data.draw(S.arrays(S.shapes(min_dims=1)))
    widths = [tuple(data.draw(st.tuples(st.integers(0, 2), st.integers(0, 2))))
              for _ in range(x.ndim)]
    value = data.draw(st.sampled_from([0.0, -1.5]))
    check(lambda t: md.pad(t, widths, value=value), x,
          reference=lambda a: np.pad(a, widths, constant_values=value))


# --------------------------------------------------------------------------- dtype is kept

@pytest.mark.parametrize("fn", [
    lambda t: (t * 2 + 1) / 3 - t ** 2, lambda t: t.max(axis=0), lambda t: md.relu(t),
    lambda t: md.gelu(t), lambda t: md.softmax(t), lambda t: md.clip(t, -0.1, 0.1),
    lambda t: t[[0, 0]], lambda t: md.pad(t, [(1, 0), (0, 1)]), lambda t: t.var(axis=1),
    lambda t: t @ t.T, lambda t: md.where(t.data > 0, t, 0.5),
], ids=["arith", "max", "relu", "gelu", "softmax", "clip", "index", "pad", "var", "matmul",
        "where"])
def test_float32_stays_float32(fn):
    x = md.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], requires_grad=True)
    out = fn(x)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == np.float32


@given(data=st.data())
def test_normal_cdf(data):
    """Phi = erfc(-x / sqrt 2) / 2 (Numerical Recipes' erfc, relative error < 1.2e-7, against
    math.erfc) and its backward phi(x) against finite differences, away from 0, where the
    fit's two sides meet with a jump of 3e-8 (the value test includes 0)."""
    from math import erfc, sqrt

    from minidiff.ops import normal_cdf
    x = data.draw(S.arrays(S.shapes(), S.floats(-6.0, 6.0)))
    exact = np.vectorize(lambda v: 0.5 * erfc(-v / sqrt(2)), otypes=[float])(x)
    np.testing.assert_allclose(host(normal_cdf(const(x))), exact, rtol=2e-7, atol=0)
    x = data.draw(S.arrays(S.shapes(), S.away_from_zero(0.01, 6.0)))
    assert gradcheck(normal_cdf, leaf(x))
