"""Operations that move elements without changing them, so their backward moves the gradient
back: reshape, transpose, indexing, concatenate, stack, pad.
"""
from minidiff import backend
from minidiff.ops._inputs import as_tensors, check_same_backend
from minidiff.tensor import Tensor


def reshape(x, shape) -> Tensor:
    (x,) = as_tensors("reshape", x)
    return Tensor._make(x.data.reshape(shape), (x,), lambda g: (g.reshape(x.shape),), "reshape")


def transpose(x, axes=None) -> Tensor:
    """Permute the axes (reverse them when ``axes`` is None); backward applies the inverse."""
    (x,) = as_tensors("transpose", x)
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(a % x.ndim for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"transpose: axes {axes} are not a permutation of {x.ndim} axes")
    inverse = tuple(sorted(range(x.ndim), key=lambda i: axes[i]))
    return Tensor._make(x.data.transpose(axes), (x,), lambda g: (g.transpose(inverse),),
                        "transpose")


def _raw_index(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def _is_advanced(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(backend.is_array(p) or isinstance(p, (list, bool)) for p in parts)


def getitem(x, index) -> Tensor:
    """``x[index]`` for basic slicing and integer/boolean array indexing.

    Backward writes the gradient into a zero array at the same positions; with an array index
    a position may be picked several times, so the writes are a scatter-*add*.
    """
    (x,) = as_tensors("getitem", x)
    index = _raw_index(index)
    parts = index if isinstance(index, tuple) else (index,)
    check_same_backend("getitem", x, *[p for p in parts if backend.is_array(p)])
    xp = backend.array_module_of(x.data)

    def backward(g):
        grad = xp.zeros(x.shape, dtype=g.dtype)
        if _is_advanced(index):
            backend.scatter_add(grad, index, g)
        else:
            grad[index] += g
        return (grad,)
    return Tensor._make(x.data[index], (x,), backward, "getitem")


def concatenate(tensors, axis: int = 0) -> Tensor:
    tensors = as_tensors("concatenate", *tensors)
    xp = backend.array_module_of(tensors[0].data)
    axis = axis % tensors[0].ndim
    bounds = [0]
    for t in tensors:
        bounds.append(bounds[-1] + t.shape[axis])

    def backward(g):
        slicer = [slice(None)] * g.ndim
        grads = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            slicer[axis] = slice(start, stop)
            grads.append(g[tuple(slicer)])
        return grads
    out = xp.concatenate([t.data for t in tensors], axis=axis)
    return Tensor._make(out, tuple(tensors), backward, "concatenate")


def stack(tensors, axis: int = 0) -> Tensor:
    tensors = as_tensors("stack", *tensors)
    xp = backend.array_module_of(tensors[0].data)
    axis = axis % (tensors[0].ndim + 1)

    def backward(g):
        return [g.take(i, axis=axis) for i in range(len(tensors))]
    out = xp.stack([t.data for t in tensors], axis=axis)
    return Tensor._make(out, tuple(tensors), backward, "stack")


def pad(x, pad_width, value: float = 0.0) -> Tensor:
    """Constant padding; ``pad_width`` as in ``numpy.pad`` (one (before, after) per axis)."""
    (x,) = as_tensors("pad", x)
    xp = backend.array_module_of(x.data)
    widths = [tuple(w) for w in pad_width]
    if len(widths) != x.ndim:
        raise ValueError(f"pad: pad_width needs one (before, after) pair per axis "
                         f"({x.ndim}), got {len(widths)}")
    inner = tuple(slice(before, before + size) for (before, _), size in zip(widths, x.shape))
    out = xp.pad(x.data, widths, mode="constant", constant_values=value)
    return Tensor._make(out, (x,), lambda g: (g[inner],), "pad")
