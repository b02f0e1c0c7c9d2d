"""Where the diffusion runs: on pixels, or on an autoencoder's latents (lesson 10).

The diffusion code (schedules, ``q_sample``, the losses, the samplers) never asks what x_0
is: it is an array of shape (N, *space.shape).  A *space* says what that array is for one
model (``pipelines.load.space_from_config`` picks it from a config):

* ``PixelSpace``: x_0 = the image scaled to [-1, 1], 1x28x28; decoding is the identity.
* ``LatentSpace(autoencoder, scale_factor)``: x_0 = z = s (mu + sigma eps), a fresh draw from
  the encoder's posterior q(z|x) = N(mu, diag sigma^2) at every step (the reparameterization
  trick, (2.1)), c x 7 x 7; a sample z is decoded by D(z / s)                        (10.1)

**Why the scale factor s.**  The schedule is built for data of unit variance: it ends at
x_T = sqrt(abar_T) x_0 + sqrt(1 - abar_T) eps ~ N(0, I) and its signal-to-noise ratio
abar_t Var(x_0) / (1 - abar_t) is what the training spreads over t.  A latent with standard
deviation 5 would keep a signal-to-noise ratio 25 times higher at every t (x_T would not be
noise), one with standard deviation 0.2 would be drowned 25 times sooner.  s = 1 / std(z) over
the training latents (CompVis' ``scale_by_std``, measured by the autoencoder's training and
stored in its checkpoint) puts z back at unit variance, so the same schedule fits    (10.2)

**Encode once.**  ``use(images)`` runs the encoder over the whole training set a single time
and keeps the posterior mean and standard deviation of every image (60,000 x c x 7 x 7 each,
float32: 47 MB each for c = 4); ``batch(index)`` then draws z from them, so a training step
costs only the U-Net.  Drawing z (rather than always taking the mean) is what the decoder was
trained to decode, and it is cheap noise augmentation; the draw uses minidiff's one
generator, so a resumed run stays exact.

The samplers clip their x_0 estimate to [-1, 1] in pixel space (where that is the data's
range) and do not clip in latent space (``clip_x0``), where unit variance means values of
+-3 are common.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time

from minidiff import backend
from minidiff.data.mnist import to_unit_range
from minidiff.errors import MinidiffInputError
from minidiff.tensor import Tensor, no_grad

__all__ = ["PixelSpace", "LatentSpace", "SpaceError", "weights_sha256", "is_latent",
           "DEFAULT_AUTOENCODER"]

#: the autoencoder ``minidiff train --preset ldm-quick`` diffuses in, unless --set autoencoder=
DEFAULT_AUTOENCODER = os.path.join("data", "checkpoints", "ae.npz")


class SpaceError(MinidiffInputError):
    """An autoencoder that is missing, is not the one a model was trained on, or whose
    latents do not fit the U-Net."""


def is_latent(config: dict) -> bool:
    """Whether a diffusion config runs in an autoencoder's latent space."""
    return bool(config["autoencoder"])


class PixelSpace:
    """x_0 is the image itself, scaled to [-1, 1]."""

    kind = "pixel"
    clip_x0 = True
    data_range = (-1.0, 1.0)     # what training_step checks x_0 against

    def __init__(self, image_size: int = 28, channels: int = 1):
        self.shape = (channels, image_size, image_size)
        self.images = None

    def use(self, images, log=None) -> "PixelSpace":
        """Keep the uint8 training images (N, 1, H, W) that ``batch`` indexes."""
        self.images = images
        return self

    def batch(self, index, draw: bool = True):
        """x_0 of the training images ``index``: 2 u / 255 - 1."""
        return to_unit_range(self.images[index])

    def encode(self, x, draw: bool = False):
        return backend.to_device(_raw(x))

    def decode(self, x0):
        """Images in [-1, 1] (clipped)."""
        return backend.xp().clip(_raw(x0), -1.0, 1.0)

    def describe(self) -> str:
        return f"pixels {'x'.join(map(str, self.shape))}"


class LatentSpace:
    """x_0 is z = s * (mu + sigma eps) from ``autoencoder``'s posterior; decode is D(z / s)."""

    kind = "latent"
    clip_x0 = False
    data_range = None            # latents have no fixed range

    def __init__(self, autoencoder, scale_factor: float, path: str | None = None):
        self.autoencoder = autoencoder.eval()
        self.scale_factor = float(scale_factor)
        self.shape = tuple(int(d) for d in autoencoder.latent_shape)
        self.path = path
        self.sha256 = weights_sha256(autoencoder)
        self.mean = self.std = None

    def encode(self, x, draw: bool = False):
        """s * z of images ``x`` in [-1, 1] (N, 1, 28, 28): the posterior mean, or a draw."""
        with no_grad():
            posterior = self.autoencoder.encode(Tensor(_raw(x)))
            mean, std = _raw(posterior.mean), _raw(posterior.std)
        z = mean + std * backend.randn(*mean.shape, dtype=mean.dtype) if draw else mean
        return self.scale_factor * z

    def use(self, images, batch: int = 500, log=None) -> "LatentSpace":
        """Encode the uint8 training images (N, 1, 28, 28) once, in batches of ``batch``,
        keeping the posterior mean and standard deviation of each (unscaled)."""
        xp = backend.xp()
        n, means, stds, start = len(images), [], [], time.time()
        log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        with no_grad():
            for begin in range(0, n, batch):
                x = to_unit_range(images[begin:begin + batch])
                posterior = self.autoencoder.encode(Tensor(x))
                means.append(_raw(posterior.mean).astype(backend.default_dtype()))
                stds.append(_raw(posterior.std).astype(backend.default_dtype()))
                done = min(begin + batch, n)
                if done == n or (begin // batch) % 20 == 19:
                    log(f"encoding the training images: {done:,}/{n:,} "
                        f"({time.time() - start:.0f} s)")
        self.mean, self.std = xp.concatenate(means), xp.concatenate(stds)
        return self

    def batch(self, index, draw: bool = True):
        """x_0 = s (mu + sigma eps) of the training images ``index`` (s mu if not ``draw``)."""
        index = backend.to_device(backend.host.asarray(index))
        mean = self.mean[index]
        if not draw:
            return self.scale_factor * mean
        eps = backend.randn(*mean.shape, dtype=mean.dtype)
        return self.scale_factor * (mean + self.std[index] * eps)

    def decode(self, x0, batch: int = 500):
        """D(z / s): images in [-1, 1] (clipped), (N, 1, 28, 28), ``batch`` latents at a time."""
        xp = backend.xp()
        z = _raw(x0)
        out = []
        with no_grad():
            for begin in range(0, len(z), batch):
                x = _raw(self.autoencoder.decode(Tensor(z[begin:begin + batch] /
                                                        self.scale_factor)))
                out.append(xp.clip(x, -1.0, 1.0))
        return xp.concatenate(out)

    def describe(self) -> str:
        return (f"latents {'x'.join(map(str, self.shape))} of {self.path or 'an autoencoder'} "
                f"(scale {self.scale_factor:.4g}, weights sha256 {self.sha256[:16]})")


def _raw(value):
    """The backend array behind a Tensor, or the array itself."""
    return value.data if isinstance(value, Tensor) else value


def weights_sha256(module) -> str:
    """sha256 over a module's weights in sorted name order (name, shape, float32 bytes):
    the identity of an autoencoder, whatever file it was loaded from."""
    digest = hashlib.sha256()
    host = backend.host
    for name, value in sorted(module.state_dict().items()):
        array = host.ascontiguousarray(backend.to_host(value), dtype=host.float32)
        digest.update(f"{name}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


