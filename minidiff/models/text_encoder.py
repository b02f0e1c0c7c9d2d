"""tau_theta: a small transformer that turns a caption's tokens into the sequence the U-Net's
cross-attention reads (lesson 11; latent diffusion trains such an encoder jointly with the
U-Net, from scratch, as here).

For tokens y (N, L) (int, 0 = padding) and width D = ``context_dim``:

    h_0 = [s ; E[y_1] + P_1 ; ... ; E[y_L] + P_L]         (N, 1 + L, D)
    h   = h + SelfAttention(LN(h))                        } ``layers`` pre-LayerNorm blocks,
    h   = h + Linear(GELU(Linear(LN(h))))                 } MLP width 4D
    tau_theta(y) = LN(h)                                  (N, 1 + L, D)

E is the token embedding, P a learned position embedding.  Padding tokens are masked out of
the keys of every attention (here and in the U-Net's cross-attention): whatever sits at a
padded position is never read.  s is a learned start vector, never masked, so that every
caption -- the empty one of classifier-free guidance included -- has at least one key to
attend to: for the empty caption tau_theta(y) reduces to what the network learns from s
alone, the "no condition" embedding (BERT's [CLS] plays the same part).
"""
from __future__ import annotations

from minidiff import backend
from minidiff.nn import Embedding, LayerNorm, Linear, Module, ModuleList, MultiheadAttention
from minidiff.nn.module import Parameter
from minidiff.ops import concatenate, gelu

__all__ = ["TextEncoder", "key_mask"]


def key_mask(tokens):
    """(N, 1 + L) boolean, True for the keys that may be attended: the start vector and every
    non-padding token of ``tokens`` (N, L)."""
    tokens = backend.array_of(tokens)
    xp = backend.array_module_of(tokens)
    return xp.concatenate([xp.ones((tokens.shape[0], 1), dtype=bool), tokens != 0], axis=1)


class _Block(Module):
    """One pre-LayerNorm transformer block: self-attention, then an MLP, both residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attention = LayerNorm(dim), MultiheadAttention(dim, heads)
        self.norm2, self.mlp_in, self.mlp_out = LayerNorm(dim), Linear(dim, 4 * dim), \
            Linear(4 * dim, dim)

    def forward(self, h, mask):
        h = h + self.attention(self.norm1(h), mask=mask)
        return h + self.mlp_out(gelu(self.mlp_in(self.norm2(h))))


class TextEncoder(Module):
    """tau_theta(y) for a vocabulary of ``vocab_size`` words (index 0 = padding) and
    captions of at most ``max_tokens`` tokens."""

    def __init__(self, vocab_size: int, context_dim: int = 64, layers: int = 2, heads: int = 4,
                 max_tokens: int = 8):
        super().__init__()
        if context_dim % heads:
            raise ValueError(f"TextEncoder: context_dim {context_dim} is not divisible by "
                             f"text_heads {heads}")
        self.vocab_size, self.context_dim, self.max_tokens = vocab_size, context_dim, max_tokens
        self.token_embedding = Embedding(vocab_size, context_dim)
        self.position_embedding = Embedding(max_tokens, context_dim)
        for table in (self.token_embedding, self.position_embedding):
            table.weight.data *= 0.02        # small, as GPT-2/BERT start them
        self.start = Parameter(0.02 * backend.randn(1, 1, context_dim))
        self.blocks = ModuleList([_Block(context_dim, heads) for _ in range(layers)])
        self.norm = LayerNorm(context_dim)

    def check_tokens(self, tokens) -> None:
        tokens = backend.array_of(tokens)
        if not backend.is_array(tokens) or tokens.ndim != 2 or tokens.dtype.kind not in "iu":
            raise ValueError(f"TextEncoder: tokens must be an integer array (N, L), got "
                             f"{getattr(tokens, 'dtype', type(tokens).__name__)} of shape "
                             f"{getattr(tokens, 'shape', None)}")
        if tokens.shape[1] > self.max_tokens:
            raise ValueError(f"TextEncoder: at most max_tokens = {self.max_tokens} tokens, "
                             f"got {tokens.shape[1]}")
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"TextEncoder: token ids must lie in [0, {self.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    def forward(self, tokens):
        """tau_theta(y): (N, 1 + L, context_dim) for tokens (N, L); pair it with
        ``key_mask(tokens)``."""
        self.check_tokens(tokens)
        tokens = backend.array_of(tokens)
        n, length = tokens.shape
        xp = backend.array_module_of(tokens)
        positions = xp.arange(length)
        h = self.token_embedding(tokens) + self.position_embedding(positions)
        start = self.start + backend.array_module_of(self.start.data).zeros(
            (n, 1, self.context_dim), dtype=self.start.dtype)          # (N, 1, D)
        h = concatenate([start, h], axis=1)
        mask = key_mask(tokens).reshape(n, 1, 1, length + 1)   # (N, heads, Lq, Lk) by broadcast
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h)
