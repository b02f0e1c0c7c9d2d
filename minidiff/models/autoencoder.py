"""The KL autoencoder of latent diffusion (lesson 09; Rombach et al. 2022, sec. 3.1).

An encoder E maps an image x to a diagonal Gaussian q(z|x) over a small latent z; a decoder D
maps z back to an image.  Stable Diffusion's first half: the diffusion model then works on z,
which is 4x smaller here (4 x 7 x 7 = 196 numbers against 784 pixels).

Shapes (default configuration, 28x28 MNIST, c = ``latent_channels``):

    E:  x (1x28x28) -> conv_in 3x3 -> 16x28x28
          level 0 (28x28, 16 ch): ResBlock            then Downsample (stride-2 conv) -> 14x14
          level 1 (14x14, 32 ch): ResBlock            then Downsample                 -> 7x7
          level 2 (7x7, 64 ch):   ResBlock
        middle ResBlock, GroupNorm -> SiLU -> conv_out 3x3 -> 2c x 7 x 7 = [mean | logvar]
    D:  z (c x 7 x 7) -> conv_in 3x3 -> 64x7x7, middle ResBlock
          level 2 (7x7, 64 ch):   ResBlock            then Upsample (nearest x2 + conv) -> 14x14
          level 1 (14x14, 32 ch): ResBlock            then Upsample                    -> 28x28
          level 0 (28x28, 16 ch): ResBlock
        GroupNorm -> SiLU -> conv_out 3x3 -> 1x28x28

The ResBlocks are the U-Net's (``blocks.py``) without a time embedding.  The loss that trains
it (reconstruction + kl_weight * KL, (9.5)) is ``autoencoder_loss`` below.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from minidiff import backend
from minidiff.models.blocks import Downsample, ResBlock, Upsample
from minidiff.models.distributions import DiagonalGaussian
from minidiff.nn import Conv2d, GroupNorm, Module, ModuleList, functional as F
from minidiff.tensor import Tensor, as_tensor, no_grad

__all__ = ["AutoencoderConfig", "AutoencoderKL", "autoencoder_loss", "scale_by_std",
           "RECON_LOSSES"]

#: reconstruction terms ``autoencoder_loss`` knows
RECON_LOSSES = ("l1", "l2")


@dataclass
class AutoencoderConfig:
    image_size: int = 28
    in_channels: int = 1
    base_channels: int = 16
    channel_mults: tuple = (1, 2, 4)   # one level per resolution: 28, 14, 7
    num_res_blocks: int = 1
    latent_channels: int = 4
    groups: int = 8
    dropout: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "AutoencoderConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"AutoencoderConfig: unknown keys {unknown}")
        if "channel_mults" in known:
            known["channel_mults"] = tuple(known["channel_mults"])
        return cls(**known)


class _Stage(Module):
    """The ResBlocks of one resolution."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = ModuleList(blocks)

    def forward(self, h):
        for block in self.blocks:
            h = block(h)
        return h


class Encoder(Module):
    """x (N, C, H, W) -> moments (N, 2c, H/f, W/f): the mean and log-variance of q(z|x)."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        self.conv_in = Conv2d(c.in_channels, c.base_channels, 3, padding=1)
        channels, stages, downsamples = c.base_channels, [], []
        for level, mult in enumerate(c.channel_mults):
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(channels, mult * c.base_channels, None, c.groups,
                                       c.dropout))
                channels = mult * c.base_channels
            stages.append(_Stage(blocks))
            if level < len(c.channel_mults) - 1:
                downsamples.append(Downsample(channels))
        self.stages, self.downsamples = ModuleList(stages), ModuleList(downsamples)
        self.mid = ResBlock(channels, channels, None, c.groups, c.dropout)
        self.norm_out = GroupNorm(c.groups, channels)
        self.conv_out = Conv2d(channels, 2 * c.latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(Module):
    """z (N, c, H/f, W/f) -> image (N, C, H, W): the encoder mirrored."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        channels = c.channel_mults[-1] * c.base_channels
        self.conv_in = Conv2d(c.latent_channels, channels, 3, padding=1)
        self.mid = ResBlock(channels, channels, None, c.groups, c.dropout)
        stages, upsamples = [], []
        for level, mult in reversed(list(enumerate(c.channel_mults))):
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(channels, mult * c.base_channels, None, c.groups,
                                       c.dropout))
                channels = mult * c.base_channels
            stages.append(_Stage(blocks))
            if level > 0:
                upsamples.append(Upsample(channels))
        self.stages, self.upsamples = ModuleList(stages), ModuleList(upsamples)
        self.norm_out = GroupNorm(c.groups, channels)
        self.conv_out = Conv2d(channels, c.in_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i < len(self.upsamples):
                h = self.upsamples[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(Module):
    """E and D with a diagonal-Gaussian posterior (lesson 09)."""

    def __init__(self, config: AutoencoderConfig | None = None, **overrides):
        super().__init__()
        config = config or AutoencoderConfig()
        if overrides:
            config = AutoencoderConfig.from_dict({**config.to_dict(), **overrides})
        factor = 2 ** (len(config.channel_mults) - 1)
        if config.image_size % factor:
            raise ValueError(f"AutoencoderKL: image_size {config.image_size} is not divisible "
                             f"by the downsampling factor {factor} of channel_mults "
                             f"{config.channel_mults}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def latent_shape(self) -> tuple:
        """(c, h, w) of one latent: (latent_channels, 7, 7) by default."""
        c = self.config
        side = c.image_size // 2 ** (len(c.channel_mults) - 1)
        return (c.latent_channels, side, side)

    def encode(self, x) -> DiagonalGaussian:
        """q(z|x) for images ``x`` in [-1, 1], shape (N, C, H, W)."""
        c = self.config
        x = as_tensor(x)
        expected = (c.in_channels, c.image_size, c.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"AutoencoderKL.encode: x must be (N, {', '.join(map(str, expected))})"
                             f", got {tuple(x.shape)}")
        moments = self.encoder(x)
        k = c.latent_channels
        return DiagonalGaussian(moments[:, :k], moments[:, k:])

    def decode(self, z) -> Tensor:
        """D(z): images (N, C, H, W) from latents (N, *latent_shape)."""
        z = as_tensor(z)
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"AutoencoderKL.decode: z must be (N, "
                             f"{', '.join(map(str, self.latent_shape))}), got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x, sample: bool = True):
        """(reconstruction, posterior): D(z) with z drawn from q(z|x) (or its mean)."""
        posterior = self.encode(x)
        z = posterior.sample() if sample else posterior.mode()
        return self.decode(z), posterior


def autoencoder_loss(x, reconstruction, posterior, kl_weight: float, recon: str = "l2"):
    """(loss, {"rec": ..., "kl": ...}): the training objective (9.5), per pixel,

        loss = mean_n [ sum_pixels rho(x - D(z)) + kl_weight * KL(q(z|x_n) || N(0, I)) ] / D

    with rho = (.)^2 ("l2", the default: measured sharper, see lesson 09) or |.| ("l1") and D
    the number of pixels of one image, so that kl_weight means what it means in CompVis'
    configs (a weight against a *summed* reconstruction error) while the loss stays O(0.1).  The terms come back as floats:
    "rec" the mean rho per pixel, "kl" the KL per latent dimension (nats)."""
    if recon not in RECON_LOSSES:
        raise ValueError(f"recon: expected one of {RECON_LOSSES}, got {recon!r}")
    diff = reconstruction - as_tensor(x)
    error = diff.abs() if recon == "l1" else diff * diff
    n = error.shape[0]
    pixels = error.size // n
    latent_dims = posterior.mean.size // n
    rec = error.mean()
    kl_per_image = posterior.kl().mean()
    loss = rec + (kl_weight / pixels) * kl_per_image
    return loss, {"rec": rec.item(), "kl": kl_per_image.item() / latent_dims}


def scale_by_std(model, x, batch: int = 500) -> float:
    """The latent scale factor (9.6): 1 / std of z ~ q(z|x) over all elements of all ``x``.

    CompVis' ``scale_by_std``: the diffusion model then works on z * scale, whose elements
    have unit variance like the N(0, I) its forward process ends in (Stable Diffusion's fixed
    0.18215 is this number for its autoencoder).  ``x``: images in [-1, 1], (N, C, H, W),
    encoded ``batch`` at a time; z is drawn from minidiff's generator.  Computed in float64."""
    xp = backend.xp()
    total = total_sq = count = 0.0
    with no_grad():
        for start in range(0, len(x), batch):
            chunk = backend.to_device(backend.array_of(x)[start:start + batch])
            z = model.encode(chunk).sample().data.astype(xp.float64)
            total += float(z.sum())
            total_sq += float((z * z).sum())
            count += z.size
    if count < 2:
        raise ValueError(f"scale_by_std: needs at least 2 latent values, got {int(count)}")
    mean = total / count
    var = (total_sq - count * mean * mean) / (count - 1)
    return 1.0 / var ** 0.5
