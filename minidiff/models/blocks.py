"""The U-Net's bricks (lesson 06): ResBlock, self-attention over pixels, down- and upsampling.

ResBlock (Ho et al. 2020, following Wide ResNets), with the time embedding added in the middle:

    h = conv3x3(SiLU(GN(x)))
    h = h + Linear(SiLU(emb))[:, :, None, None]        # "which step are we at?" (U-Net only;
                                                       #  emb_dim=None: the autoencoder's blocks)
    h = conv3x3(dropout(SiLU(GN(h))))
    out = skip(x) + h                                  # skip: 1x1 conv when channels change

AttentionBlock: every pixel attends to every other one (lesson 05's attention over H*W tokens):

    q, k, v = split(conv1x1(GN(x)))                    # (B, heads, HW, d) each
    out = x + conv1x1(softmax(q k^T / sqrt(d)) v)      # heads are a batch axis, no loop

SpatialTransformer (latent diffusion's text conditioning, lesson 11): the pixels become a
sequence of H*W tokens that attend to each other, then to a context sequence c = tau_theta(y)
(queries from the image, keys and values from the text), then pass an MLP, each step a pre-norm
residual; the output projection starts at zero, so a new block is the identity:

    h = conv1x1_in(GN(x))  -> (B, HW, C)
    h = h + SelfAttention(LN(h))
    h = h + CrossAttention(LN(h), c)                   # Q = LN(h) Wq, K = c Wk, V = c Wv
    h = h + Linear(SiLU(Linear(LN(h))))                # width 4C (SiLU, not LDM's GEGLU:
                                                       #  GELU's tanh cost 3x the block)
    out = x + conv1x1_out(h -> (B, C, H, W))           # conv1x1_out initialised to 0
"""
from __future__ import annotations

from minidiff import backend
from minidiff.nn import (Conv2d, Dropout, GroupNorm, Identity, LayerNorm, Linear, Module,
                         MultiheadAttention, functional as F)

__all__ = ["ResBlock", "AttentionBlock", "SpatialTransformer", "Downsample", "Upsample"]


class ResBlock(Module):
    def __init__(self, in_channels: int, out_channels: int, emb_dim: int | None,
                 groups: int = 8, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = GroupNorm(groups, in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        # no time embedding (emb_dim None): the block of the autoencoder (lesson 09)
        self.emb_proj = Linear(emb_dim, out_channels) if emb_dim else None
        self.norm2 = GroupNorm(groups, out_channels)
        self.dropout = Dropout(dropout)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels \
            else Identity()

    def forward(self, x, emb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb_proj is not None:
            h = h + self.emb_proj(F.silu(emb)).reshape(emb.shape[0], self.out_channels, 1, 1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(Module):
    def __init__(self, channels: int, heads: int = 4, groups: int = 8):
        super().__init__()
        if channels % heads:
            raise ValueError(f"AttentionBlock: {channels} channels do not split into "
                             f"{heads} heads")
        self.channels, self.heads = channels, heads
        self.norm = GroupNorm(groups, channels)
        self.qkv = Conv2d(channels, 3 * channels, 1)
        self.proj_out = Conv2d(channels, channels, 1)

    def forward(self, x, context=None, context_mask=None):
        """x (B, C, H, W); ``context`` must be None (cross-attention: ``SpatialTransformer``)."""
        if context is not None:
            raise ValueError("AttentionBlock attends over pixels only; a context needs a "
                             "SpatialTransformer (UNet context_dim)")
        b, c, height, width = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, height * width)
        qkv = qkv.transpose(1, 0, 2, 4, 3)                     # (3, B, heads, HW, d)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        o = o.transpose(0, 1, 3, 2).reshape(b, c, height, width)
        return x + self.proj_out(o)


class SpatialTransformer(Module):
    """Self-attention over pixels, cross-attention to ``context``, MLP (see the docstring).

    ``context`` (B, Lc, context_dim) is required; ``context_mask`` (B, Lc) boolean, True for
    the keys that may be attended (False: padding tokens)."""

    def __init__(self, channels: int, heads: int, groups: int, context_dim: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"SpatialTransformer: {channels} channels do not split into "
                             f"{heads} heads")
        self.channels, self.context_dim = channels, context_dim
        self.norm = GroupNorm(groups, channels)
        self.proj_in = Conv2d(channels, channels, 1)
        self.norm1, self.self_attention = LayerNorm(channels), MultiheadAttention(channels, heads)
        self.norm2 = LayerNorm(channels)
        self.cross_attention = MultiheadAttention(channels, heads, context_dim)
        self.norm3 = LayerNorm(channels)
        self.ff_in, self.ff_out = Linear(channels, 4 * channels), Linear(4 * channels, channels)
        self.proj_out = Conv2d(channels, channels, 1)
        self.proj_out.weight.data[...] = 0      # zero-initialised: the block starts as the
        self.proj_out.bias.data[...] = 0        # identity

    def forward(self, x, context=None, context_mask=None):
        b, c, height, width = x.shape
        if context is None or context.ndim != 3 or context.shape[0] != b \
                or context.shape[2] != self.context_dim:
            raise ValueError(f"SpatialTransformer: context must be ({b}, L, {self.context_dim}), "
                             f"got {None if context is None else context.shape}")
        mask = None
        if context_mask is not None:   # (B, Lc) -> (B, heads, Lq, Lc) by broadcasting
            mask = backend.array_of(context_mask).reshape(b, 1, 1, -1)
        h = self.proj_in(self.norm(x)).reshape(b, c, height * width).transpose(0, 2, 1)
        h = h + self.self_attention(self.norm1(h))
        h = h + self.cross_attention(self.norm2(h), context, mask)
        h = h + self.ff_out(F.silu(self.ff_in(self.norm3(h))))
        return x + self.proj_out(h.transpose(0, 2, 1).reshape(b, c, height, width))


class Downsample(Module):
    """Halve the resolution with a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.upsample_nearest(x, 2))
