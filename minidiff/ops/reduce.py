"""Reductions over axes: sum, mean, max, var (population variance, ddof = 0).

Each backward first restores the reduced axes (``keepdims``) so that the output gradient
broadcasts back over the elements that were reduced:

    out = sum_i x_i          dL/dx_i = g
    out = mean_i x_i         dL/dx_i = g / N
    out = max_i x_i          dL/dx_i = g [x_i = out] / #{j: x_j = out}   (ties share equally)
    out = mean_i (x_i - m)^2 dL/dx_i = g 2 (x_i - m) / N
"""
import builtins

from minidiff import backend
from minidiff.ops._inputs import as_tensors
from minidiff.tensor import Tensor


def _normalize_axes(axis, ndim: int) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    normalized = []
    for a in axes:
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        normalized.append(a % ndim if ndim else 0)
    return tuple(sorted(set(normalized)))


def _keep(grad, axes: tuple, keepdims: bool):
    """Put back the reduced axes as size-1 axes (no copy)."""
    if keepdims or not axes:
        return grad
    shape = list(grad.shape)
    for a in axes:
        shape.insert(a, 1)
    return grad.reshape(shape)


def _count(shape, axes) -> int:
    n = 1
    for a in axes:
        n *= shape[a]
    return n


def sum(x, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    (x,) = as_tensors("sum", x)
    axes = _normalize_axes(axis, x.ndim)
    xp = backend.array_module_of(x.data)

    def backward(g):
        return (xp.broadcast_to(_keep(g, axes, keepdims), x.shape),)
    return Tensor._make(x.data.sum(axis=axes, keepdims=keepdims), (x,), backward, "sum")


def mean(x, axis=None, keepdims: bool = False) -> Tensor:
    (x,) = as_tensors("mean", x)
    axes = _normalize_axes(axis, x.ndim)
    n = _count(x.shape, axes)
    xp = backend.array_module_of(x.data)

    def backward(g):
        return (xp.broadcast_to(_keep(g, axes, keepdims) / n, x.shape),)
    return Tensor._make(x.data.mean(axis=axes, keepdims=keepdims), (x,), backward, "mean")


def max(x, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    (x,) = as_tensors("max", x)
    axes = _normalize_axes(axis, x.ndim)
    out = x.data.max(axis=axes, keepdims=True)

    def backward(g):
        winners = x.data == out
        # bool / int division gives float64: cast so a float32 input gets a float32 grad
        share = (winners / winners.sum(axis=axes, keepdims=True)).astype(g.dtype, copy=False)
        return (_keep(g, axes, keepdims) * share,)
    result = out if keepdims else out.reshape([s for i, s in enumerate(out.shape)
                                               if i not in axes])
    return Tensor._make(result, (x,), backward, "max")


def var(x, axis=None, keepdims: bool = False) -> Tensor:
    (x,) = as_tensors("var", x)
    axes = _normalize_axes(axis, x.ndim)
    n = _count(x.shape, axes)
    centered = x.data - x.data.mean(axis=axes, keepdims=True)
    out = (centered * centered).mean(axis=axes, keepdims=keepdims)

    def backward(g):
        return (_keep(g, axes, keepdims) * (2.0 / n) * centered,)
    return Tensor._make(out, (x,), backward, "var")
