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
from minidiff.backend import threads
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


def _silu_into(xp, x, out) -> None:
    """out = x / (1 + e^-x) with in-place ufuncs.  Where -x is beyond exp's range (x < -88.7
    in float32) e^-x is inf, and so is 1 + e^-x: x / (1 + e^-x) is then -0, the float
    nearest to silu(x) there; NumPy's overflow warning is silenced for this."""
    xp.negative(x, out=out)
    with backend.host.errstate(over="ignore"):
        xp.exp(out, out=out)
    out += 1
    xp.divide(x, out, out=out)


def _silu_grad_into(xp, x, out, g, d) -> None:
    """d = g s (1 + x - out), the gradient of silu (see ``silu``), with s = out / x."""
    # s = out / x, except where |x| < eps: there out lost digits (x subnormal) or is 0 / 0,
    # and s = 1/2 + x/4 + ... is 1/2 to within rounding
    with backend.host.errstate(invalid="ignore"):
        xp.divide(out, x, out=d)
    d[xp.abs(x) < xp.finfo(out.dtype).eps] = 0.5
    t = x - out
    t += 1
    d *= t
    d *= g


def silu(x) -> Tensor:
    """x * sigmoid(x) = x / (1 + e^-x) (also called swish), the U-Net's activation.

    Written with e^-x rather than ``sigmoid``'s tanh (NumPy's exp costs less than its tanh)
    and with in-place ufuncs, on every core (``backend.threads``): this runs on every U-Net
    feature map.  The backward pass needs s = sigmoid(x), d silu / dx = s (1 + x (1 - s)) =
    s (1 + x - out), and reads s off the output, s = out / x (1/2 where |x| < eps), rather
    than keep it from the forward pass (one feature map more per activation until backward)
    or compute another exp (which costs ten times a division).
    """
    x, xp = _unary(x, "silu")
    x_flat = x.data.reshape(-1)
    out = xp.empty_like(x_flat)
    threads.split(lambda lo, hi: _silu_into(xp, x_flat[lo:hi], out[lo:hi]), out.size, out)

    def backward(g):
        g_flat, d = g.reshape(-1), xp.empty_like(out)
        threads.split(lambda lo, hi: _silu_grad_into(xp, x_flat[lo:hi], out[lo:hi],
                                                     g_flat[lo:hi], d[lo:hi]), d.size, d)
        return (d.reshape(x.shape),)
    return Tensor._make(out.reshape(x.shape), (x,), backward, "silu")


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
