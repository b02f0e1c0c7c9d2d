"""``MultiheadAttention``: self- and cross-attention with heads as a batch axis (lesson 05).

Queries come from x (B, Lq, E); keys and values from ``context`` (B, Lk, Ec) -- x itself for
self-attention, another sequence of a different length and width for cross-attention:

    Q = x Wq^T,  K = c Wk^T,  V = c Wv^T          (B, L, E)
    split E into h heads of d = E / h:            (B, L, E) -> (B, h, L, d)   (a reshape and
                                                   a transpose, no loop over heads)
    O = attention(Q, K, V) over (B, h) as batch   (B, h, Lq, d) -> (B, Lq, E)
    y = O Wo^T + bo

The projections are ``Linear`` layers (PyTorch-style U(+-1/sqrt(fan_in)) initialisation).
"""
from __future__ import annotations

from minidiff.nn import functional as F
from minidiff.nn.layers import Linear
from minidiff.nn.module import Module

__all__ = ["MultiheadAttention"]


class MultiheadAttention(Module):
    """h-head attention; ``context_dim`` (default ``embed_dim``) is the key/value width."""

    def __init__(self, embed_dim: int, num_heads: int, context_dim: int | None = None,
                 bias: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} is not divisible by "
                             f"num_heads {num_heads}")
        context_dim = embed_dim if context_dim is None else context_dim
        self.embed_dim, self.num_heads, self.context_dim = embed_dim, num_heads, context_dim
        self.q_proj = Linear(embed_dim, embed_dim, bias)
        self.k_proj = Linear(context_dim, embed_dim, bias)
        self.v_proj = Linear(context_dim, embed_dim, bias)
        self.out_proj = Linear(embed_dim, embed_dim, bias)

    def _heads(self, t):
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, -1).transpose(0, 2, 1, 3)

    def forward(self, x, context=None, mask=None):
        """x (B, Lq, E), context (B, Lk, Ec) or None; mask broadcastable to (B, h, Lq, Lk)
        (boolean, True = may attend, or additive float)."""
        context = x if context is None else context
        b, lq, _ = x.shape
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(context))
        v = self._heads(self.v_proj(context))
        o = F.scaled_dot_product_attention(q, k, v, mask)
        o = o.transpose(0, 2, 1, 3).reshape(b, lq, self.embed_dim)
        return self.out_proj(o)

    def extra_repr(self):
        return f"{self.embed_dim}, heads={self.num_heads}, context_dim={self.context_dim}"
