"""The DDPM U-Net: predicts the noise eps_theta(x_t, t) (lesson 06; Ho et al. 2020, App. B).

Shape of the network (reference configuration, 28x28 MNIST, 1,623,169 parameters):

    t -> [cos|sin](32) -> Linear(32,128) -> SiLU -> Linear(128,128) = emb   (eq. (6.1))

    x (1x28x28) -> conv_in 3x3 -> 32x28x28                                  skip
      level 0 (28x28, 32 ch): ResBlock, ResBlock                            skip, skip
      Downsample (stride-2 conv) -> 14x14                                   skip
      level 1 (14x14, 64 ch): ResBlock, ResBlock                            skip, skip
      Downsample -> 7x7                                                     skip
      level 2 (7x7, 64 ch): (ResBlock + Attention) x 2                      skip, skip
    middle: ResBlock, Attention, ResBlock
      up level 2: (concat skip, ResBlock + Attention) x 3, Upsample -> 14x14
      up level 1: (concat skip, ResBlock) x 3, Upsample -> 28x28
      up level 0: (concat skip, ResBlock) x 3
    GroupNorm -> SiLU -> conv_out 3x3 -> 1x28x28   (= predicted noise)

Every activation stored on the way down is consumed, in reverse order, by exactly one
ResBlock on the way up (improved-diffusion's layout): the skips hand fine detail across.

``patch_size`` p > 1 runs the whole network on p x p patches: x (C x H x W) is rearranged into
C p^2 channels of H/p x W/p pixels (``space_to_depth``) before conv_in, and conv_out's C p^2
channels back into C x H x W (``depth_to_space``).  No pixel is lost, and the first level
works at H/p, where a level costs about p^2 times less than at full size.

Conditioning hooks for latent diffusion (lesson 11; ``minidiff.models.conditioned`` chooses them):
``concat_channels`` extra input channels (a mask and a masked image concatenated to x_t) and
``context_dim``, which turns every attention block (at ``attention_resolutions`` and in the
middle) into a ``SpatialTransformer`` that also cross-attends to a context sequence.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from minidiff import backend
from minidiff.models.blocks import (AttentionBlock, Downsample, ResBlock, SpatialTransformer,
                                    Upsample)
from minidiff.models.embedding import timestep_embedding
from minidiff.nn import Conv2d, GroupNorm, Linear, Module, ModuleList, functional as F
from minidiff.ops import concatenate
from minidiff.tensor import Tensor

__all__ = ["UNetConfig", "UNet", "REFERENCE_CONFIG"]


@dataclass
class UNetConfig:
    in_channels: int = 1
    out_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    channel_mults: tuple = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple = (7,)
    num_heads: int = 4
    dropout: float = 0.0
    groups: int = 8
    time_embed_dim: int = 32         # sinusoid width; the MLP widens it to 4 * base_channels
    patch_size: int = 1              # the network sees p x p patches as p^2 channels
    concat_channels: int = 0
    context_dim: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "UNetConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"UNetConfig: unknown keys {unknown}")
        for key in ("channel_mults", "attention_resolutions"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


REFERENCE_CONFIG = UNetConfig()


class _Level(Module):
    """The ResBlocks (each optionally followed by attention) of one resolution."""

    def __init__(self, blocks, attentions):
        super().__init__()
        self.blocks = ModuleList(blocks)
        self.attentions = ModuleList(attentions)


class UNet(Module):
    def __init__(self, config: UNetConfig | None = None, **overrides):
        super().__init__()
        config = config or UNetConfig()
        if overrides:
            config = UNetConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        c = config
        emb_dim = 4 * c.base_channels
        self.time_mlp1 = Linear(c.time_embed_dim, emb_dim)
        self.time_mlp2 = Linear(emb_dim, emb_dim)
        patch_area = c.patch_size ** 2
        self.conv_in = Conv2d((c.in_channels + c.concat_channels) * patch_area, c.base_channels,
                              3, padding=1)

        def block(cin, cout):
            return ResBlock(cin, cout, emb_dim, c.groups, c.dropout)

        def attention(channels, resolution=None):
            if resolution is not None and resolution not in c.attention_resolutions:
                return None
            if c.context_dim:
                return SpatialTransformer(channels, c.num_heads, c.groups, c.context_dim)
            return AttentionBlock(channels, c.num_heads, c.groups)

        skips, channels = [c.base_channels], c.base_channels
        resolution = c.image_size // c.patch_size
        down, downsamples = [], []
        for level, mult in enumerate(c.channel_mults):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(block(channels, mult * c.base_channels))
                channels = mult * c.base_channels
                attns.append(attention(channels, resolution))
                skips.append(channels)
            down.append(_Level(blocks, [a for a in attns if a is not None]))
            if level < len(c.channel_mults) - 1:
                downsamples.append(Downsample(channels))
                skips.append(channels)
                resolution //= 2
        self.down = ModuleList(down)
        self.downsamples = ModuleList(downsamples)

        self.mid_block1 = block(channels, channels)
        self.mid_attention = attention(channels)
        self.mid_block2 = block(channels, channels)

        up, upsamples = [], []
        for level, mult in reversed(list(enumerate(c.channel_mults))):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(block(channels + skips.pop(), mult * c.base_channels))
                channels = mult * c.base_channels
                attns.append(attention(channels, resolution))
            up.append(_Level(blocks, [a for a in attns if a is not None]))
            if level > 0:
                upsamples.append(Upsample(channels))
                resolution *= 2
        self.up = ModuleList(up)
        self.upsamples = ModuleList(upsamples)
        self.norm_out = GroupNorm(c.groups, channels)
        self.conv_out = Conv2d(channels, c.out_channels * patch_area, 3, padding=1)

    def _run_level(self, level, h, emb, context, skips=None, stored=None, mask=None):
        attentions = iter(level.attentions)
        has_attention = len(level.attentions) > 0
        for block in level.blocks:
            if skips is not None:
                h = concatenate([h, skips.pop()], axis=1)
            h = block(h, emb)
            if has_attention:
                h = next(attentions)(h, context, mask)
            if stored is not None:
                stored.append(h)
        return h

    def check_inputs(self, x, t) -> None:
        """Refuse, in the model's words, what would otherwise fail six frames down (or not
        at all): x not a floating Tensor/array of shape (N, C, H, W) with H and W halvable
        by every Downsample, t not N non-negative integer steps."""
        c = self.config
        if not (isinstance(x, Tensor) or backend.is_array(x)):
            raise TypeError(f"UNet: x must be a Tensor or an array, got {type(x).__name__}")
        if x.dtype.kind != "f":
            raise TypeError(f"UNet: x must hold floats in [-1, 1], got {x.dtype} (uint8 pixels "
                            "go through data.to_unit_range first)")
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"UNet: x must be (N, {c.in_channels}, H, W), got {x.shape}")
        factor = c.patch_size * 2 ** (len(c.channel_mults) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            patches = f" after {c.patch_size}x{c.patch_size} patches" if c.patch_size > 1 else ""
            raise ValueError(f"UNet: image size {x.shape[2]}x{x.shape[3]} cannot be halved "
                             f"{len(c.channel_mults) - 1} time(s) by its Downsamples{patches}; "
                             f"use multiples of {factor} (configured for {c.image_size})")
        steps = t.data if isinstance(t, Tensor) else t
        if not backend.is_array(steps):
            raise TypeError(f"UNet: t must be an array of N = {x.shape[0]} integer steps, "
                            f"got {type(t).__name__}")
        if steps.shape != (x.shape[0],):
            raise ValueError(f"UNet: t must hold one step per image, shape ({x.shape[0]},), "
                             f"got {steps.shape}")
        if steps.dtype.kind not in "iu":
            raise TypeError(f"UNet: t must be integer steps (0-based indices), got {steps.dtype}")
        if x.shape[0] and int(steps.min()) < 0:
            raise ValueError(f"UNet: t must be >= 0 (0-based steps), got {int(steps.min())}")

    def forward(self, x, t, concat=None, context=None, context_mask=None):
        """eps_theta(x_t, t): x (N, C, H, W), t (N,) integer steps (0-based); with the hooks,
        ``concat`` (N, concat_channels, H, W), ``context`` (N, L, context_dim) and its key
        mask (N, L) boolean (True: may be attended)."""
        c = self.config
        self.check_inputs(x, t)
        emb = timestep_embedding(t, c.time_embed_dim)
        emb = self.time_mlp2(F.silu(self.time_mlp1(emb)))
        if c.concat_channels:
            if concat is None or concat.shape[1] != c.concat_channels:
                raise ValueError(f"UNet: concat must have {c.concat_channels} channels, got "
                                 f"{None if concat is None else concat.shape}")
            x = concatenate([x, concat], axis=1)
        if c.patch_size > 1:
            x = F.space_to_depth(x, c.patch_size)
        if c.context_dim and context is None:
            raise ValueError(f"UNet: context_dim is {c.context_dim}: a context (N, L, "
                             f"{c.context_dim}) is needed")
        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            h = self._run_level(level, h, emb, context, stored=skips, mask=context_mask)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
                skips.append(h)
        h = self.mid_attention(self.mid_block1(h, emb), context, context_mask)
        h = self.mid_block2(h, emb)
        for i, level in enumerate(self.up):
            h = self._run_level(level, h, emb, context, skips=skips, mask=context_mask)
            if i < len(self.upsamples):
                h = self.upsamples[i](h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.depth_to_space(out, c.patch_size) if c.patch_size > 1 else out
