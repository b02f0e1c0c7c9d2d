"""The one sampling loop: n images from an ``eps_model`` in chunks (lesson 08).

``sample_images`` is what ``minidiff sample``, ``inpaint``, ``eval`` (and ``eval --prompts``),
the trainer's grids, ``bench`` and the lessons run: seed the generator once, then for each
chunk of at most ``batch`` items draw x_T, run the sampler (DDIM or DDPM with the model's
reverse variance, ``diffusion.run_sampler``), decode through the space (pixels or the
autoencoder's latents) and refuse samples that hold NaN or Inf.  What changes between
callers is only the ``eps_model`` of each chunk (``eps_for(begin, end)``: the chunk's prompts,
images, masks) and, for RePaint-style inpainting, the known part of each chunk.
"""
from __future__ import annotations

import math

from minidiff import backend
from minidiff.diffusion import run_sampler
from minidiff.errors import MinidiffInputError, check_int, check_memory

__all__ = ["sample_images", "check_sample_count", "BYTES_PER_PIXEL"]

#: bytes each pixel of a sample holds until a command has written it: the decoded float32
#: chunks (4), their concatenation (4), the float temporaries of ``from_unit_range`` (8) and
#: the uint8 digit (1)
BYTES_PER_PIXEL = 17


def check_sample_count(name: str, n: int, shape=(1, 28, 28), frames: int = 0,
                       frame_shape=None, what: str = "samples") -> int:
    """``n`` if ``n`` samples of ``shape`` (and ``frames`` snapshots of each, float32, of
    ``frame_shape``: the space's) can be held at once on this machine (``errors.check_memory``);
    one line naming ``name`` otherwise, before any sampling."""
    pixels, snapshot = math.prod(shape), math.prod(frame_shape or shape)
    return check_memory(name, n, pixels * BYTES_PER_PIXEL + frames * snapshot * 4 * 2, what)


def sample_images(eps_model, schedule, space, n: int, sampler: str = "ddim", steps=None,
                  eta: float = 0.0, seed: int | None = 0, batch: int | None = None,
                  variance: str = "fixed_small", frames: int = 0, progress=None,
                  eps_for=None, known_for=None):
    """``(images, frames)``: ``n`` samples decoded to images in [-1, 1], (n, C, H, W) on the
    active backend, and (if ``frames``) about that many snapshots of x_t along the chain
    (undecoded, each (n, *space.shape)).

    ``eps_model(x_t, t)`` serves every chunk, unless ``eps_for(begin, end)`` gives the one of
    the items begin..end-1 (their prompts, images, masks).  ``known_for``: ``(begin, end) ->
    (x0_known, mask)`` or None (replacement inpainting, (11.8)).  ``steps`` None: all T (a
    trained model's own count: ``pipelines.load.model_sampler``);
    ``batch`` None: all n at once; ``seed`` None: the generator as it is.  ``progress(done,
    total)`` counts sampler steps over all chunks."""
    check_int("--n", n, low=1)
    steps = schedule.num_timesteps if steps is None else check_int(
        "--steps", steps, low=1, high=schedule.num_timesteps)
    batch = n if batch is None else check_int("--batch", batch, low=1)
    if seed is not None:
        backend.manual_seed(seed)
    make_eps = eps_for or (lambda begin, end: eps_model)
    xp = backend.xp()
    kwargs = {"return_frames": True, "frame_every": max(1, steps // frames)} if frames else {}
    total = -(-n // batch) * steps
    images, snapshots = [], []
    for begin in range(0, n, batch):
        end = min(begin + batch, n)
        hook = None if progress is None else (
            lambda i, _, done=begin // batch * steps: progress(done + i, total))
        result = run_sampler(sampler, make_eps(begin, end), schedule,
                             (end - begin, *space.shape), steps, eta=eta, variance=variance,
                             clip_x0=space.clip_x0, progress=hook,
                             known=None if known_for is None else known_for(begin, end),
                             **kwargs)
        x0, chain = result if frames else (result, None)
        decoded = space.decode(x0)
        if not bool(xp.isfinite(decoded).all()):
            bad = int((~xp.isfinite(decoded).reshape(end - begin, -1).all(axis=1)).sum())
            raise MinidiffInputError(
                f"{bad} of {end - begin} samples hold NaN or Inf: the network's output "
                f"overflowed during {sampler} sampling (its weights are finite)",
                "try the EMA weights (without --raw), another checkpoint, or --sampler ddim")
        images.append(decoded)
        if chain is not None:
            snapshots.append(chain)
    frames_out = [xp.concatenate([chunk[i] for chunk in snapshots])
                  for i in range(len(snapshots[0]))] if snapshots else []
    return xp.concatenate(images), frames_out

