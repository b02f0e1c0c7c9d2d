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

With a ``context_dim`` it also cross-attends to a context sequence (keys and values from the
context: the hook latent diffusion's text conditioning uses).
"""
from __future__ import annotations

from minidiff.nn import (Conv2d, Dropout, GroupNorm, Identity, Linear, Module,
                         MultiheadAttention, functional as F)

__all__ = ["ResBlock", "AttentionBlock", "Downsample", "Upsample"]


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
    def __init__(self, channels: int, heads: int = 4, groups: int = 8,
                 context_dim: int | None = None):
        super().__init__()
        if channels % heads:
            raise ValueError(f"AttentionBlock: {channels} channels do not split into "
                             f"{heads} heads")
        self.channels, self.heads = channels, heads
        self.norm = GroupNorm(groups, channels)
        self.qkv = Conv2d(channels, 3 * channels, 1)
        self.proj_out = Conv2d(channels, channels, 1)
        self.cross = MultiheadAttention(channels, heads, context_dim) if context_dim else None

    def forward(self, x, context=None):
        b, c, height, width = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, height * width)
        qkv = qkv.transpose(1, 0, 2, 4, 3)                     # (3, B, heads, HW, d)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        o = o.transpose(0, 1, 3, 2).reshape(b, c, height, width)
        x = x + self.proj_out(o)
        if self.cross is not None and context is not None:
            tokens = x.reshape(b, c, height * width).transpose(0, 2, 1)   # (B, HW, C)
            tokens = tokens + self.cross(tokens, context)
            x = tokens.transpose(0, 2, 1).reshape(b, c, height, width)
        return x


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
