"""Elementwise arithmetic, matrix product, and elementwise functions, each with its backward.

The local derivatives, in the notation of lesson 00 (``g`` is dL/d(out)):

    out = a + b     dL/da = g                dL/db = g
    out = a - b     dL/da = g                dL/db = -g
    out = a * b     dL/da = g b              dL/db = g a
    out = a / b     dL/da = g / b            dL/db = -g a / b^2
    out = a ** b    dL/da = g b a^(b-1)      dL/db = g out log(a)
    out = a @ b     dL/da = g @ b^T          dL/db = a^T @ g      (batched over leading axes)
    out = exp(a)    dL/da = g out            out = log(a)    dL/da = g / a
    out = sqrt(a)   dL/da = g / (2 out)      out = |a|       dL/da = g sign(a)
"""
from minidiff import backend
from minidiff.backend import threads
from minidiff.ops._inputs import as_tensors
from minidiff.tensor import Tensor


def _xp(t: Tensor):
    return backend.array_module_of(t.data)


def add(a, b) -> Tensor:
    a, b = as_tensors("add", a, b)

    def backward(g):
        return g, g
    return Tensor._make(threads.binary(_xp(a).add, a.data, b.data), (a, b), backward, "add")


def sub(a, b) -> Tensor:
    a, b = as_tensors("sub", a, b)

    def backward(g):
        return g, (-g if b.requires_grad else None)
    return Tensor._make(a.data - b.data, (a, b), backward, "sub")


def mul(a, b) -> Tensor:
    a, b = as_tensors("mul", a, b)

    def backward(g):
        return (g * b.data if a.requires_grad else None,
                g * a.data if b.requires_grad else None)
    return Tensor._make(a.data * b.data, (a, b), backward, "mul")


def div(a, b) -> Tensor:
    a, b = as_tensors("div", a, b)
    out = a.data / b.data

    def backward(g):
        grad_a = g / b.data if a.requires_grad else None
        grad_b = -g * out / b.data if b.requires_grad else None
        return grad_a, grad_b
    return Tensor._make(out, (a, b), backward, "div")


def neg(a) -> Tensor:
    (a,) = as_tensors("neg", a)
    return Tensor._make(-a.data, (a,), lambda g: (-g,), "neg")


def power(a, b) -> Tensor:
    a, b = as_tensors("power", a, b)
    out = a.data ** b.data

    def backward(g):
        grad_a = g * b.data * a.data ** (b.data - 1) if a.requires_grad else None
        grad_b = g * out * _xp(a).log(a.data) if b.requires_grad else None
        return grad_a, grad_b
    return Tensor._make(out, (a, b), backward, "power")


def matmul(a, b) -> Tensor:
    """Batched matrix product with NumPy's broadcasting of the leading axes.

    A 1-D operand is treated as a row (left) or column (right) vector and that axis is
    dropped from the result, as in ``numpy.matmul``.
    """
    a, b = as_tensors("matmul", a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least 1 dimension, got shapes "
                         f"{a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:  # checked before 1-D operands reshape
        raise ValueError(f"matmul: inner dimensions differ: a has shape {a.shape}, "
                         f"b has shape {b.shape}")
    if a.ndim == 1:
        from minidiff.ops.shape import reshape
        out = matmul(reshape(a, (1, a.shape[0])), b)
        if b.ndim == 1:  # vector @ vector: a 0-d result, as in numpy.matmul
            return reshape(out, ())
        return reshape(out, out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        from minidiff.ops.shape import reshape
        out = matmul(a, reshape(b, (b.shape[0], 1)))
        return reshape(out, out.shape[:-1])

    def backward(g):
        grad_a = g @ b.data.swapaxes(-1, -2) if a.requires_grad else None
        grad_b = a.data.swapaxes(-1, -2) @ g if b.requires_grad else None
        return grad_a, grad_b
    return Tensor._make(a.data @ b.data, (a, b), backward, "matmul")


def exp(a) -> Tensor:
    (a,) = as_tensors("exp", a)
    out = _xp(a).exp(a.data)
    return Tensor._make(out, (a,), lambda g: (g * out,), "exp")


def log(a) -> Tensor:
    (a,) = as_tensors("log", a)
    return Tensor._make(_xp(a).log(a.data), (a,), lambda g: (g / a.data,), "log")


def sqrt(a) -> Tensor:
    (a,) = as_tensors("sqrt", a)
    out = _xp(a).sqrt(a.data)
    return Tensor._make(out, (a,), lambda g: (g / (2 * out),), "sqrt")


def abs(a) -> Tensor:  # noqa: A001  (mirrors numpy's name)
    (a,) = as_tensors("abs", a)
    xp = _xp(a)
    return Tensor._make(xp.abs(a.data), (a,), lambda g: (g * xp.sign(a.data),), "abs")


def where(condition, a, b) -> Tensor:
    """``a`` where ``condition`` holds, else ``b``; the gradient flows to the chosen side."""
    condition = condition.data if isinstance(condition, Tensor) else condition
    a, b = as_tensors("where", a, b)
    xp = _xp(a)
    condition = xp.asarray(condition, dtype=bool)

    def backward(g):
        zero = xp.zeros((), dtype=g.dtype)
        return (xp.where(condition, g, zero) if a.requires_grad else None,
                xp.where(condition, zero, g) if b.requires_grad else None)
    return Tensor._make(xp.where(condition, a.data, b.data), (a, b), backward, "where")


def clip(a, low=None, high=None) -> Tensor:
    """``a`` limited to [low, high]; the gradient is zero where the limit bit."""
    (a,) = as_tensors("clip", a)
    xp = _xp(a)
    out = xp.clip(a.data, low, high)

    def backward(g):
        inside = xp.ones(a.shape, dtype=bool)
        if low is not None:
            inside &= a.data >= low
        if high is not None:
            inside &= a.data <= high
        return (g * inside,)
    return Tensor._make(out, (a,), backward, "clip")
