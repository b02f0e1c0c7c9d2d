"""Activations and the softmax family, each with its hand-derived backward.

    tanh:     out' = 1 - out^2
    sigmoid:  s'   = s (1 - s)
    relu:     out' = [x > 0]
    silu:     x s(x),  out' = s (1 + x (1 - s))
    gelu:     0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)   (the tanh form)
    softmax:  p = exp(x - max) / sum exp(x - max);  dL/dx = p (g - sum(g p))
    log_softmax: y = x - max - log sum exp(x - max);  dL/dx = g - exp(y) sum(g)

Subtracting the maximum before ``exp`` changes nothing mathematically (it cancels in the ratio)
and keeps ``exp`` from overflowing, so inputs of +-1e4 are fine.
"""
import math

from minidiff import backend
from minidiff.ops._inputs import as_tensors
from minidiff.tensor import Tensor


def _unary(x, name):
    (x,) = as_tensors(name, x)
    return x, backend.array_module_of(x.data)


def tanh(x) -> Tensor:
    x, xp = _unary(x, "tanh")
    out = xp.tanh(x.data)
    return Tensor._make(out, (x,), lambda g: (g * (1 - out * out),), "tanh")


def _sigmoid(xp, data):
    """A new array 0.5 (1 + tanh(x/2)), which equals 1 / (1 + e^-x) and never overflows,
    built with in-place ufuncs."""
    s = xp.tanh(0.5 * data)
    s *= 0.5
    s += 0.5
    return s


def sigmoid(x) -> Tensor:
    x, xp = _unary(x, "sigmoid")
    out = _sigmoid(xp, x.data)
    return Tensor._make(out, (x,), lambda g: (g * out * (1 - out),), "sigmoid")


def relu(x) -> Tensor:
    x, xp = _unary(x, "relu")
    return Tensor._make(xp.maximum(x.data, 0), (x,), lambda g: (g * (x.data > 0),), "relu")


def _one_plus_exp_neg(xp, data):
    """A new array 1 + e^-x, built with in-place ufuncs.  Where -x is beyond exp's range
    (x < -88.7 in float32) e^-x is inf, and so is 1 + e^-x: x / (1 + e^-x) is then -0, the
    float nearest to silu(x) there; NumPy's overflow warning is silenced for this."""
    e = xp.negative(data, out=xp.empty_like(data))   # out=: an array even where x is 0-d
    with backend.host.errstate(over="ignore"):
        xp.exp(e, out=e)
    e += 1
    return e


def silu(x) -> Tensor:
    """x * sigmoid(x) = x / (1 + e^-x) (also called swish), the U-Net's activation.

    Written with e^-x rather than ``sigmoid``'s tanh (NumPy's exp costs less than its tanh)
    and with in-place ufuncs: this runs on every U-Net feature map.  The backward pass needs
    s = sigmoid(x) and reads it off the output, s = out / x (1/2 where |x| < eps), rather
    than keep it from the forward pass (one feature map more per activation until backward)
    or compute another exp (which costs ten times a division).
    """
    x, xp = _unary(x, "silu")
    out = _one_plus_exp_neg(xp, x.data)
    xp.divide(x.data, out, out=out)

    def backward(g):
        # d silu / dx = s (1 + x (1 - s)) = s (1 + x - out)
        # s = out / x, except where |x| < eps: there out lost digits (x subnormal) or is
        # 0 / 0, and s = 1/2 + x/4 + ... is 1/2 to within rounding
        with backend.host.errstate(invalid="ignore"):
            s = xp.divide(out, x.data, out=xp.empty_like(out))
        s = xp.where(xp.abs(x.data) < xp.finfo(out.dtype).eps, 0.5, s)
        d = x.data - out
        d += 1
        d *= s
        d *= g
        return (d,)
    return Tensor._make(out, (x,), backward, "silu")


def gelu(x) -> Tensor:
    """GELU in its tanh approximation (as in GPT-2); within 1e-3 of the exact x Phi(x)."""
    x, xp = _unary(x, "gelu")
    c = math.sqrt(2.0 / math.pi)
    t = xp.tanh(c * (x.data + 0.044715 * x.data ** 3))

    def backward(g):
        du = c * (1 + 3 * 0.044715 * x.data ** 2)
        return (g * (0.5 * (1 + t) + 0.5 * x.data * (1 - t * t) * du),)
    return Tensor._make(0.5 * x.data * (1 + t), (x,), backward, "gelu")


def softmax(x, axis: int = -1) -> Tensor:
    x, xp = _unary(x, "softmax")
    e = xp.exp(x.data - x.data.max(axis=axis, keepdims=True))
    p = e / e.sum(axis=axis, keepdims=True)

    def backward(g):
        return (p * (g - (g * p).sum(axis=axis, keepdims=True)),)
    return Tensor._make(p, (x,), backward, "softmax")


def log_softmax(x, axis: int = -1) -> Tensor:
    x, xp = _unary(x, "log_softmax")
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)
    return Tensor._make(out, (x,), backward, "log_softmax")
