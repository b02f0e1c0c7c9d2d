"""What a conditioned model is given at sampling time (lesson 11): ``cond`` and ``uncond``.

``sampling_cond`` builds both for n samples from prompts (text) and images with masks
(concat); ``concat_input`` is the concat model's extra channels [m on the grid, E(masked
image)], the same at training (``train.conditioner``) and at sampling.
"""
from __future__ import annotations

from minidiff import backend
from minidiff.config.vocabulary import kind_of, uses_concat, uses_text
from minidiff.data.masks import mask_to_grid, masked_image
from minidiff.data.mnist import to_unit_range
from minidiff.models.conditioned import ConditionError

__all__ = ["pixel_size", "concat_input", "sampling_cond"]


# ---------------------------------------------------------------------------------- inputs
def pixel_size(space) -> int:
    """The side of the images a space's x_0 stands for (28 for MNIST's latents)."""
    autoencoder = getattr(space, "autoencoder", None)
    return int(autoencoder.config.image_size) if autoencoder is not None else space.shape[-1]


def concat_input(space, images, masks):
    """``cond["concat"]`` = [m on the grid, E(masked image)] (N, 1 + C, h, w) for images in
    [-1, 1] (N, 1, 28, 28) and masks (N, 1, 28, 28), 1 = to fill.  The masked image has every
    pixel to fill set to 0 before it is encoded, so nothing under the mask gets through; a
    latent cell is to fill if any of its pixels is (``masks.mask_to_grid``)."""
    xp = backend.xp()
    images = backend.to_device(backend.array_of(images))
    masks = backend.to_device(backend.array_of(masks)).reshape(images.shape)
    known = space.encode(masked_image(images, masks), draw=False)
    grid = mask_to_grid(masks, known.shape[-1]).astype(known.dtype)
    return xp.concatenate([grid, known], axis=1)


# ---------------------------------------------------------------------------------- sampling
def sampling_cond(config: dict, n: int, *, prompts=None, tokenizer=None, space=None,
                  images=None, masks=None):
    """``(cond, uncond)`` for sampling ``n`` images from a model conditioned as ``config``
    says.  ``prompts``: one caption per sample, or None (the empty caption: unconditional);
    ``images`` (N, 1, 28, 28) in [-1, 1] (or uint8) with ``masks`` (same shape, 1 = to fill)
    for a concat model: None generates from nothing (everything to fill).  uncond is cond with
    the empty caption (the concat input is kept: guidance is over the text only)."""
    cond = {}
    if prompts is not None and not uses_text(config):
        raise ConditionError(f"--prompt: this model is conditioned on {kind_of(config)!r}, not "
                             "on text; it takes no prompt")
    if images is not None and not uses_concat(config):
        raise ConditionError(f"--image/--mask: this model is conditioned on "
                             f"{kind_of(config)!r}; it was not trained to inpaint")
    if uses_text(config):
        prompts = [""] * n if prompts is None else list(prompts)
        if len(prompts) != n:
            raise ConditionError(f"--prompt: {len(prompts)} prompts for {n} samples")
        cond["tokens"] = backend.to_device(tokenizer.encode(prompts))
    if uses_concat(config):
        if (images is None) != (masks is None):
            raise ConditionError("--image/--mask: give both (the image and what to fill in "
                                 "it) or neither (generation from nothing)")
        if images is None:
            size = pixel_size(space)
            images = backend.xp().zeros((n, 1, size, size), dtype=backend.default_dtype())
            masks = backend.xp().ones((n, 1, size, size), dtype=backend.default_dtype())
        images = backend.array_of(images)
        if str(images.dtype) == "uint8":
            images = to_unit_range(images)
        if len(images) != n or masks is None or len(masks) != n:
            raise ConditionError(f"--image/--mask: expected {n} images and {n} masks, got "
                                 f"{len(images)} and {None if masks is None else len(masks)}")
        cond["concat"] = concat_input(space, images, masks)
    uncond = dict(cond)
    if "tokens" in cond:
        uncond["tokens"] = backend.xp().zeros_like(cond["tokens"])
    return cond, uncond
