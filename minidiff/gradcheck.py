"""Gradient checking by central finite differences (lesson 00, equation (0.4)).

For a scalar function L(x), the central difference

    (L(x + h e_i) - L(x - h e_i)) / (2h)  =  dL/dx_i + O(h^2)

approximates each partial derivative; in float64 with h = 1e-6 it agrees with an exact
gradient to about 1e-8.  ``gradcheck`` compares it against what ``backward`` computes.
"""
from __future__ import annotations

from minidiff import backend
from minidiff.tensor import Tensor, no_grad

__all__ = ["gradcheck", "GradcheckError", "numerical_gradient"]


class GradcheckError(AssertionError):
    """Raised when backward and finite differences disagree; names the worst element."""


def _scalar_loss(fn, inputs, weights):
    """L = sum(fn(*inputs) * weights): a fixed random projection makes any output scalar."""
    out = fn(*inputs)
    return out, (out * weights).sum() if weights is not None else out.sum()


def numerical_gradient(fn, inputs, index: int, weights, eps: float):
    """Central differences of L with respect to ``inputs[index]``, element by element."""
    x = inputs[index]
    xp = backend.array_module_of(x.data)
    grad = xp.zeros(x.shape, dtype=xp.float64)
    if not x.data.flags.c_contiguous:  # e.g. a transposed view: reshape(-1) would copy
        x.data = xp.ascontiguousarray(x.data)
    flat = x.data.reshape(-1)  # a view: writing into it perturbs x in place
    gflat = grad.reshape(-1)
    with no_grad():
        for i in range(flat.size):
            original = flat[i].item()
            flat[i] = original + eps
            plus = _scalar_loss(fn, inputs, weights)[1].item()
            flat[i] = original - eps
            minus = _scalar_loss(fn, inputs, weights)[1].item()
            flat[i] = original
            gflat[i] = (plus - minus) / (2 * eps)
    return grad


def gradcheck(fn, *inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-4,
              seed: int = 0) -> bool:
    """Check ``backward`` of ``fn(*inputs)`` against central finite differences.

    ``inputs`` are float64 tensors (those with ``requires_grad`` are checked).  The output may
    have any shape: it is reduced with fixed random weights so that every output element's
    gradient path is exercised.  Returns True, or raises ``GradcheckError`` that reports the
    worst element (input, index, analytic, numerical).
    """
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.requires_grad and t.dtype.name != "float64":
            raise TypeError(f"gradcheck: input {i} has dtype {t.dtype}; use float64 "
                            "(finite differences in float32 are too coarse)")
    for t in inputs:
        if isinstance(t, Tensor):
            t.grad = None
    with no_grad():
        probe = fn(*inputs)
    xp = backend.array_module_of(probe.data)
    rng = backend.host.random.default_rng(seed)
    weights = Tensor(backend.to_device(rng.standard_normal(probe.shape), probe.backend))
    _, loss = _scalar_loss(fn, inputs, weights)
    loss.backward()

    for index, x in enumerate(inputs):
        if not (isinstance(x, Tensor) and x.requires_grad):
            continue
        analytic = x.grad if x.grad is not None else xp.zeros(x.shape)
        numeric = numerical_gradient(fn, inputs, index, weights, eps)
        error = xp.abs(analytic - numeric) - (atol + rtol * xp.abs(numeric))
        worst = int(error.argmax()) if error.size else 0
        if error.size and error.reshape(-1)[worst].item() > 0:
            where = tuple(int(i) for i in backend.host.unravel_index(worst, x.shape))
            raise GradcheckError(
                f"gradient of input {index} (shape {x.shape}) is wrong at {where}: "
                f"backward gives {analytic.reshape(-1)[worst].item():.8g}, finite differences "
                f"give {numeric.reshape(-1)[worst].item():.8g} "
                f"(max abs error {float(xp.abs(analytic - numeric).max()):.3g})")
    return True
