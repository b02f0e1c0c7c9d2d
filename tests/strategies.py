"""Hypothesis strategies shared by the test modules.

Arrays are drawn on the host as float64 NumPy arrays (``tests`` may import numpy; the package
may not); turn them into tensors with ``minidiff.tensor(array, requires_grad=True)``, which
moves them to the active backend.

Shapes are tiny on purpose: ``gradcheck`` perturbs one element at a time.
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

MAX_DIMS = 3
MAX_SIDE = 3


def floats(low=-2.0, high=2.0):
    """Finite float64 numbers in [low, high]."""
    return st.floats(low, high, allow_nan=False, allow_infinity=False, width=64)


def away_from_zero(low=0.1, high=2.0):
    """Numbers with low <= |v| <= high, either sign (for abs, relu, division)."""
    return st.tuples(st.sampled_from([-1.0, 1.0]), floats(low, high)).map(lambda t: t[0] * t[1])


def away_from(points, margin=0.05, low=-2.0, high=2.0):
    """Numbers in [low, high] at least ``margin`` away from every one of ``points`` (kinks)."""
    return floats(low, high).filter(lambda v: all(abs(v - p) >= margin for p in points))


def shapes(min_dims=0, max_dims=MAX_DIMS, min_side=1, max_side=MAX_SIDE):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=MAX_DIMS, max_side=MAX_SIDE):
    """Tuples of ``num_shapes`` shapes that broadcast together (often with size-1 axes and
    missing leading axes)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, min_side=1,
        max_side=max_side).map(lambda b: b.input_shapes)


def arrays(shape, elements=None):
    """float64 arrays of ``shape`` (a tuple or a strategy of tuples)."""
    return hnp.arrays(np.float64, shape, elements=elements if elements is not None else floats())


@st.composite
def array_and_axis(draw, min_dims=1, elements=None, keepdims=True):
    """(array, axis, keepdims): axis is None, an int (maybe negative) or a tuple of axes."""
    shape = draw(shapes(min_dims=min_dims))
    x = draw(arrays(shape, elements))
    axis = draw(axes(len(shape)))
    return x, axis, (draw(st.booleans()) if keepdims else False)


def axes(ndim):
    """None, a single (possibly negative) axis, or a non-empty tuple of distinct axes."""
    if ndim == 0:
        return st.none()
    single = st.integers(-ndim, ndim - 1)
    several = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim,
                       unique=True).map(tuple)
    return st.one_of(st.none(), single, several)


@st.composite
def distinct_arrays(draw, shape=None, gap=0.1):
    """float64 arrays whose elements differ pairwise by at least ``gap`` (max without ties)."""
    shape = draw(shapes()) if shape is None else shape
    size = int(np.prod(shape, dtype=np.int64))
    order = draw(st.permutations(range(size)))
    scale = draw(floats(gap, 0.5))
    offset = draw(floats(-1.0, 1.0))
    return (np.asarray(order, dtype=np.float64) * scale + offset).reshape(shape)


@st.composite
def broadcast_pair(draw, elements_a=None, elements_b=None):
    """Two float64 arrays whose shapes broadcast together."""
    shape_a, shape_b = draw(broadcastable_shapes(2))
    return draw(arrays(shape_a, elements_a)), draw(arrays(shape_b, elements_b))


@st.composite
def gaussian_mixtures(draw, max_components=3, max_dim=3):
    """(means (K, D), stds (K,), weights (K,)) of a mixture of isotropic Gaussians, the data
    sets whose exact denoiser ``minidiff.diffusion.oracles.GaussianMixture`` knows."""
    k = draw(st.integers(1, max_components))
    d = draw(st.integers(1, max_dim))
    means = draw(arrays((k, d), floats(-0.8, 0.8)))
    stds = draw(arrays((k,), floats(0.05, 0.5)))
    raw = draw(arrays((k,), floats(0.1, 1.0)))
    return means, stds, raw / raw.sum()
