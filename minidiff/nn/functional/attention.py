"""Scaled dot-product attention with a fused backward (lesson 05).

For queries q (..., Lq, d), keys k (..., Lk, d) and values v (..., Lk, dv):

    S = q k^T / sqrt(d)          (..., Lq, Lk)   how well query a matches key b
    P = softmax_rows(S)          (..., Lq, Lk)   each row non-negative and summing to one
    O = P v                      (..., Lq, dv)   each output a weighted average of the values

A mask (broadcastable to (..., Lq, Lk)) is either boolean -- True where a query may attend,
as in PyTorch -- or a float added to S (-inf entries count as masked).  Masked scores are
replaced by a large negative constant, so their weights are exactly 0 after the exponential
and no gradient flows through them (a row with every key masked averages all values).

Backward, with G = dL/dO (lesson 00 for the products, the softmax Jacobian for P):

    dv = P^T G
    dP = G v^T
    dS = P * (dP - rowsum(dP * P))      (softmax: dS_ab = P_ab (dP_ab - sum_c dP_ac P_ac))
    dq = dS k / sqrt(d),  dk = dS^T q / sqrt(d)

Only P is kept from the forward pass; every step is a batched matrix product over the
leading axes (heads are a batch axis, so there is no loop over heads).
"""
import math

from minidiff import backend
from minidiff.ops._inputs import as_tensors
from minidiff.tensor import Tensor

__all__ = ["scaled_dot_product_attention", "attention_weights"]

_MASKED = -1e9


def _scores(xp, q, k, mask, scale):
    """(P, masked): the attention weights and a boolean array of masked scores (or None)."""
    s = xp.matmul(q, k.swapaxes(-1, -2))
    s *= scale
    masked = None
    if mask is not None:
        m = mask.data if isinstance(mask, Tensor) else mask
        if m.dtype.kind == "b":
            masked = ~m
        else:  # additive: -inf entries are masked exactly like False ones
            m = m.astype(s.dtype)
            masked = m == -float("inf")
            s = s + xp.where(masked, xp.asarray(0, dtype=s.dtype), m)
        s = xp.where(masked, xp.asarray(_MASKED, dtype=s.dtype), s)
    s -= s.max(axis=-1, keepdims=True)
    xp.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s, masked


def attention_weights(q, k, mask=None):
    """P = softmax(q k^T / sqrt(d)) as a plain array (for inspection and tests)."""
    q, k = as_tensors("attention_weights", q, k)
    xp = backend.array_module_of(q.data)
    return _scores(xp, q.data, k.data, mask, 1.0 / math.sqrt(q.shape[-1]))[0]


def scaled_dot_product_attention(q, k, v, mask=None) -> Tensor:
    """O = softmax(q k^T / sqrt(d) [masked]) v, batched over leading axes."""
    q, k, v = as_tensors("scaled_dot_product_attention", q, k, v)
    xp = backend.array_module_of(q.data)
    if k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2]:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not match "
                         "(need q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv))")
    scale = 1.0 / math.sqrt(q.shape[-1])
    p, masked = _scores(xp, q.data, k.data, mask, scale)
    out = xp.matmul(p, v.data)

    def backward(g):
        dv = xp.matmul(p.swapaxes(-1, -2), g) if v.requires_grad else None
        ds = xp.matmul(g, v.data.swapaxes(-1, -2))
        ds -= (ds * p).sum(axis=-1, keepdims=True)
        ds *= p
        ds *= scale
        if masked is not None:  # a masked score is a constant: no gradient flows through it
            ds = xp.where(masked, xp.asarray(0, dtype=ds.dtype), ds)
        dq = xp.matmul(ds, k.data) if q.requires_grad else None
        dk = xp.matmul(ds.swapaxes(-1, -2), q.data) if k.requires_grad else None
        return dq, dk, dv
    return Tensor._make(out, (q, k, v), backward, "attention")
