"""Inpainting (lesson 11): fill the masked part of digits with a diffusion model; the command
is ``minidiff inpaint`` (``minidiff.commands.inpaint``, where every option is described).

Two methods: **concat** (a model trained with the mask and E(masked image) as extra input
channels, conditioning concat or hybrid) and **replace** (RePaint without resampling: after
every step the known part of x is replaced by the forward-noised original, (11.8), through
the samplers' ``known=``).  In a latent model the mask is brought to the latent grid
(``data.masks.mask_to_grid``) and x0_known is the encoding of the *masked* image; either way
the decoded result's known pixels are pasted back from the original.
"""
from __future__ import annotations

import re

from minidiff import backend
from minidiff.config.vocabulary import uses_concat, uses_text
from minidiff.data.masks import mask_to_grid, masked_image
from minidiff.data.mnist import from_unit_range, load_mnist, to_unit_range
from minidiff.diffusion.guidance import MAX_GUIDANCE, guided
from minidiff.errors import MinidiffInputError, check_float, check_input_file
from minidiff.pipelines.load import load_pipeline
from minidiff.pipelines.sample import sample_images

__all__ = ["load_images", "is_inverted", "complete", "load_inpainter", "image_guidance_for",
           "METHODS", "InpaintError"]

#: how the known pixels reach the model: as input channels, or replaced along the chain
METHODS = ("concat", "replace")
_TEST_SPEC = re.compile(r"^test:(\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)$")


class InpaintError(MinidiffInputError):
    """An image, mask, method or prompt ``minidiff inpaint`` cannot use."""


# ----------------------------------------------------------------------------- inputs

def load_images(spec: str, size: int = 28, note=None):
    """``(images uint8 (N, 1, size, size), source int64 (N,))`` for ``--image``: MNIST test
    indices ``test:I``, ``test:I,J,K``, ``test:A-B`` (B included) or a mix, or a PNG file
    (source -1).  A bad spec or an index out of range raises ``InpaintError``.

    A PNG drawn dark on light (``is_inverted``: its border, which is background in every
    MNIST digit, is mostly bright) is inverted to MNIST's light on dark, and ``note(text)``
    is told so: the models only know white digits on black, and would complete a black
    digit as a white one on a white page."""
    host = backend.host
    spec = str(spec).strip()
    if spec.startswith("test:"):
        match = _TEST_SPEC.match(spec.replace(" ", ""))
        if not match:
            raise InpaintError(f"--image: expected test:I, test:I,J,K or test:A-B (MNIST test "
                               f"indices), got {spec!r}")
        indices = []
        for part in match.group(1).split(","):
            low, _, high = part.partition("-")
            low, high = int(low), int(high or low)
            if high < low:
                raise InpaintError(f"--image: the range {part} runs backwards; expected A-B "
                                   "with A <= B")
            indices.extend(range(low, high + 1))
        images, _ = load_mnist("test")
        bad = [i for i in indices if i >= len(images)]
        if bad:
            raise InpaintError(f"--image: test index {bad[0]} is out of range; the MNIST "
                               f"test set holds {len(images)} images (0..{len(images) - 1})")
        index = host.asarray(indices, dtype=host.int64)
        return images[index], index
    if not spec.lower().endswith(".png"):
        raise InpaintError(f"--image: expected test:I, test:I,J,K, test:A-B or a .png file, "
                           f"got {spec!r}")
    check_input_file("--image", spec)
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415
    try:
        with Image.open(spec) as picture:
            if picture.size != (size, size):
                raise InpaintError(f"--image: {spec} is {picture.size[0]}x{picture.size[1]} "
                                   f"pixels; expected {size}x{size} grayscale (as MNIST)")
            pixels = host.asarray(picture.convert("L"), dtype=host.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise InpaintError(f"--image: {spec} is not a readable PNG ({error})") from None
    if is_inverted(pixels):
        pixels = 255 - pixels
        if note is not None:
            note(f"--image: {spec} is dark on light (its border is mostly bright); inverted "
                 "to light on dark, as MNIST")
    return pixels[None, None], host.asarray([-1], dtype=host.int64)


def is_inverted(pixels, border: int = 2) -> bool:
    """Whether a uint8 (H, W) digit is drawn dark on light: the mean of its outer ``border``
    pixels (the background of any centred digit; 0 in every MNIST image) is above mid-grey."""
    host = backend.host
    pixels = host.asarray(backend.to_host(pixels), dtype=host.float64)
    frame = host.ones(pixels.shape, dtype=bool)
    frame[border:-border, border:-border] = False
    return bool(pixels[frame].mean() > 127.5)


# ----------------------------------------------------------------------------- the sampling

def complete(eps_for, schedule, space, images, mask, n: int = 1, sampler: str = "ddim",
             steps=None, eta: float = 0.0, seed: int = 0, batch: int = 250,
             method: str = "replace", progress=None, variance: str = "fixed_small"):
    """``n`` completions of each image: uint8 (N * n, 1, 28, 28), image-major.

    ``images``: uint8 (N, 1, 28, 28); ``mask``: (28, 28), 1 = fill; ``eps_for(x, m)``: the
    ``eps_model(x_t, t)`` to sample the items whose images are ``x`` (in [-1, 1]) and pixel
    masks ``m`` (both (b, 1, 28, 28)) with: the plain network for ``replace``, one that
    conditions on them for ``concat``.  ``replace`` passes ``known=(x0_known, mask)`` (11.8)
    to the sampler, in the space's coordinates (x0_known: the masked image's); the known
    pixels are pasted back (module doc).  ``variance``: DDPM's reverse variance, the one the
    model was trained with (its config's ``variance``, lesson 13)."""
    if method not in METHODS:
        raise InpaintError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    host = backend.host
    items = host.repeat(backend.to_host(images), n, axis=0)            # image-major
    pixel_mask = backend.to_host(mask).astype(backend.default_dtype())
    pixel_mask = backend.to_device(pixel_mask.reshape(1, 1, *pixel_mask.shape[-2:]))

    def chunk(begin, end):
        """The chunk's images in [-1, 1] and their masks."""
        x = to_unit_range(items[begin:end])
        return x, backend.xp().broadcast_to(pixel_mask, x.shape)

    def known_for(begin, end):
        x, m = chunk(begin, end)
        grid = m if space.kind == "pixel" else mask_to_grid(m, space.shape[-1])
        return space.encode(masked_image(x, m)), backend.to_device(grid).astype(x.dtype)

    filled, _ = sample_images(None, schedule, space, len(items), sampler, steps, eta, seed,
                              batch, variance, progress=progress,
                              eps_for=lambda begin, end: eps_for(*chunk(begin, end)),
                              known_for=known_for if method == "replace" else None)
    x, m = chunk(0, len(items))
    return from_unit_range(m * filled + (1 - m) * x)


# ----------------------------------------------------------------------------- the model

def image_guidance_for(config, method, prompt=None, guidance=None, image_guidance=None):
    """The image guidance scale a completion runs at, None for none: ``image_guidance``
    where given, else, for a concat completion without a caption or a caption guidance, the
    config's ``image_guidance`` -- None where that is 1, the plain conditional model (a
    checkpoint written before the key has it from ``DEFAULTS`` when it loads)."""
    if image_guidance is not None:
        return float(image_guidance)
    if method == "concat" and prompt is None and guidance is None:
        default = float(config["image_guidance"])
        return None if default == 1.0 else default
    return None


def load_inpainter(path, method=None, prompt=None, guidance=None, use_ema: bool = True,
                   autoencoder=None, image_guidance=None):
    """``(eps_for, schedule, space, config, method)`` for ``complete`` from a checkpoint.

    ``method`` None picks concat for a model trained with concat / hybrid conditioning and
    replace otherwise; concat on another model, ``prompt`` on a model without text and
    ``guidance`` on an unconditional model raise ``InpaintError`` naming the option.

    ``image_guidance`` s (concat only): guidance (11.4) over the known part of the image
    instead of the caption, eps(x_t, nothing known) + s (eps(x_t, the masked image) -
    eps(x_t, nothing known)), the caption (if any) the same in both; "nothing known" is the
    all-covering mask a concat model learnt to generate from (``mask_all_fraction``).
    s > 1 leans the completion towards what the known part makes likeliest
    (data/checkpoints/inpaint.md measures it).  Not together with ``guidance``; None is the
    model's own (``image_guidance_for``)."""
    pipeline = load_pipeline(path, use_ema=use_ema, autoencoder=autoencoder)
    kind = pipeline.kind
    method = method or ("concat" if uses_concat(pipeline.config) else "replace")
    if method == "concat" and not uses_concat(pipeline.config):
        raise InpaintError(f"--method concat: {path} was trained with conditioning {kind!r}, "
                           "not with the mask and masked image concatenated (concat or hybrid)",
                           "use --method replace")
    if prompt is not None and not uses_text(pipeline.config):
        raise InpaintError(f"--prompt: {path} was trained with conditioning {kind!r}, without "
                           "text (crossattn or hybrid)")
    if guidance is not None and kind == "none":
        raise InpaintError(f"--guidance: {path} is an unconditional model (conditioning "
                           "'none'); guidance needs a conditioned one")
    if image_guidance is not None:
        if method != "concat":
            raise InpaintError(f"--image-guidance: expected the concat method (a model trained "
                               f"with concat or hybrid conditioning), got {method!r} for {path}")
        if guidance is not None:
            raise InpaintError("--image-guidance: expected it without --guidance (one guidance "
                               f"at a time), got --guidance {guidance}")
        image_guidance = check_float("--image-guidance", image_guidance, low=0.0,
                                     high=MAX_GUIDANCE)
    image_guidance = image_guidance_for(pipeline.config, method, prompt, guidance,
                                        image_guidance)
    if prompt is not None:
        pipeline.tokenizer.encode([prompt])        # an unknown word is an error now, not later

    def eps_for(x, m):
        """concat: the model sees [z_t, m, E(masked x)]; replace: it generates from nothing
        (everything to fill), the samplers' ``known=`` does the rest."""
        prompts = None if prompt is None else [prompt] * len(x)
        images, masks = (x, m) if method == "concat" else (None, None)
        cond, uncond = pipeline.cond(len(x), prompts=prompts, images=images, masks=masks)
        if image_guidance == 1.0:   # (11.10) at s = 1 is eps(x_t, the masked image): one pass
            return pipeline.eps(cond)
        if image_guidance is not None:
            nothing_known, _ = pipeline.cond(len(x), prompts=prompts)
            return guided(pipeline.eps_model, cond, nothing_known, image_guidance)
        # without a prompt cond = uncond: guidance (11.4) is the identity, so one pass
        return pipeline.eps(cond, None if prompt is None else uncond, guidance)
    return eps_for, pipeline.schedule, pipeline.space, pipeline.config, method
