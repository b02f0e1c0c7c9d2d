"""``minidiff inpaint``: fill the masked part of MNIST digits with a diffusion model (lesson 11).

    minidiff inpaint --checkpoint data/checkpoints/ldm.npz --image test:123 --mask bottom \\
                     --n 8 --out out.png
    minidiff inpaint --checkpoint F --image test:0-499 --mask box:0,14,28,28 --n 1 --out c.npz
    minidiff inpaint --checkpoint F --image digit.png --mask mask.png --method replace

Two methods, one per kind of model:

* **concat** (a model trained with ``conditioning`` concat or hybrid, ``minidiff.conditioning``):
  the U-Net sees [z_t, mask, E(masked image)] at every step, as Stable Diffusion's inpainting
  model does; it learnt in training to complete what the mask hides.
* **replace** (the default for any other model): RePaint without resampling; after every step
  the known part of x is replaced by the forward-noised original (11.8), ``known=`` of the
  samplers (``minidiff.diffusion.samplers``).  The model never learnt to inpaint; it only
  sees the known part as part of the noisy state.  (A concat model sampled this way is given
  the mask "everything to fill", with which it learnt to generate from nothing.)

In a latent model the mask is brought to the latent grid (``masks.mask_to_grid``: a cell is
filled if any of its pixels is) and x0_known is the scaled encoding (the posterior mean) of
the *masked* image (``masks.masked_image``: every pixel to fill set to 0), the same E(masked
image) a concat model is given: an encoder's receptive field spans many pixels, and the
encoding of the whole image would carry the hidden pixels into the known cells.  With either
method and in either space, the decoded result's known pixels are then pasted back from the
original: the completions differ from the image only under the mask (in pixel space with
replacement they already equal it there).

``--image``: MNIST test indices (``test:123``, ``test:1,5,9``, ``test:0-499``) or a 28x28
grayscale PNG (white digit on black, as MNIST).  ``--out x.png``: one row per image, the
original, the masked input (mid-grey where to fill), then the ``--n`` completions;
``--out x.npz``: ``images`` uint8 (N * n, 28, 28), image-major (all completions of the first
image first), ``source`` (N * n,) the test index of each (-1 for a PNG) and ``mask`` uint8
(28, 28), 1 = filled.  All images x completions go through the sampler together, ``--batch``
at a time.
"""
from __future__ import annotations

import re
import sys

from minidiff import backend
from minidiff.validation import (ArgumentParser, MinidiffInputError, check_input_file,
                                 check_int, check_output_path, command, float_arg, int_arg)

__all__ = ["load_images", "complete", "load_inpainter", "build_parser", "main",
           "METHODS", "InpaintError"]

METHODS = ("concat", "replace")
IMAGE_TYPES, ARRAY_TYPES = (".png", ".jpg", ".jpeg"), (".npz",)
_TEST_SPEC = re.compile(r"^test:(\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)$")


class InpaintError(MinidiffInputError):
    """An image, mask, method or prompt ``minidiff inpaint`` cannot use."""


# ----------------------------------------------------------------------------- inputs

def load_images(spec: str, size: int = 28):
    """``(images uint8 (N, 1, size, size), source int64 (N,))`` for ``--image``: MNIST test
    indices ``test:I``, ``test:I,J,K``, ``test:A-B`` (B included) or a mix, or a PNG file
    (source -1).  A bad spec or an index out of range raises ``InpaintError``."""
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
        from minidiff.data import load_mnist  # noqa: PLC0415
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
    return pixels[None, None], host.asarray([-1], dtype=host.int64)


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
    from minidiff.data import from_unit_range, to_unit_range  # noqa: PLC0415
    from minidiff.diffusion import default_steps, run_sampler  # noqa: PLC0415
    from minidiff.masks import mask_to_grid, masked_image  # noqa: PLC0415
    xp = backend.xp()
    if method not in METHODS:
        raise InpaintError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    steps = default_steps(schedule, sampler, steps)
    check_int("--steps", steps, low=1, high=schedule.num_timesteps)
    backend.manual_seed(seed)
    host = backend.host
    items = host.repeat(backend.to_host(images), n, axis=0)            # image-major
    pixel_mask = backend.to_host(mask).astype(backend.default_dtype())
    pixel_mask = backend.to_device(pixel_mask.reshape(1, 1, *pixel_mask.shape[-2:]))
    chunks, total = [], -(-len(items) // batch) * steps
    for begin in range(0, len(items), batch):
        x = to_unit_range(items[begin:begin + batch])
        m = xp.broadcast_to(pixel_mask, x.shape)
        known = None
        if method == "replace":
            grid = m if space.kind == "pixel" else mask_to_grid(m, space.shape[-1])
            known = (space.encode(masked_image(x, m)), backend.to_device(grid).astype(x.dtype))
        hook = None if progress is None else (
            lambda i, _, done=begin // batch * steps: progress(done + i, total))
        z = run_sampler(sampler, eps_for(x, m), schedule, (len(x), *space.shape), steps,
                        eta=eta, variance=variance, clip_x0=space.clip_x0, progress=hook,
                        known=known)
        filled = space.decode(z)
        if not bool(xp.isfinite(filled).all()):
            raise MinidiffInputError(f"the completions hold NaN or Inf: the network's output "
                                     f"overflowed during {sampler} sampling",
                                     "try the EMA weights or another checkpoint")
        chunks.append(from_unit_range(m * filled + (1 - m) * x))
    return host.concatenate(chunks)


# ----------------------------------------------------------------------------- the model

def load_inpainter(path, method=None, prompt=None, guidance=None, use_ema: bool = True,
                   autoencoder=None):
    """``(eps_for, schedule, space, config, method)`` for ``complete`` from a checkpoint.

    ``method`` None picks concat for a model trained with concat / hybrid conditioning and
    replace otherwise; concat on another model, ``prompt`` on a model without text and
    ``guidance`` on an unconditional model raise ``InpaintError`` naming the option."""
    from minidiff.nn.module import StateDictError  # noqa: PLC0415
    from minidiff.spaces import space_from_checkpoint  # noqa: PLC0415
    from minidiff.train.checkpoint import (eps_model_from_checkpoint,  # noqa: PLC0415
                                           load_checkpoint)
    arrays = load_checkpoint(path)
    config = arrays["config"]
    kind = config.get("conditioning", "none")
    method = method or ("concat" if kind in ("concat", "hybrid") else "replace")
    if method == "concat" and kind not in ("concat", "hybrid"):
        raise InpaintError(f"--method concat: {path} was trained with conditioning {kind!r}, "
                           "not with the mask and masked image concatenated (concat or hybrid)",
                           "use --method replace")
    if prompt is not None and kind not in ("crossattn", "hybrid"):
        raise InpaintError(f"--prompt: {path} was trained with conditioning {kind!r}, without "
                           "text (crossattn or hybrid)")
    if guidance is not None and kind == "none":
        raise InpaintError(f"--guidance: {path} is an unconditional model (conditioning "
                           "'none'); guidance needs a conditioned one")
    if kind == "none":
        try:
            eps_model, schedule, config = eps_model_from_checkpoint(path, use_ema=use_ema,
                                                                    arrays=arrays)
        except StateDictError as error:
            raise InpaintError(f"--checkpoint: {path} does not fit the model its config "
                               f"describes: {' '.join(str(error).split())}") from None
        return ((lambda x, m: eps_model), schedule, space_from_checkpoint(arrays, autoencoder),
                config, method)
    from minidiff.conditioning import load_conditioned  # noqa: PLC0415
    model = load_conditioned(path, use_ema=use_ema, autoencoder=autoencoder, arrays=arrays)
    if prompt is not None:
        model.tokenizer.encode([prompt])           # an unknown word is an error now, not later

    def eps_for(x, m):
        """concat: the model sees [z_t, m, E(masked x)]; replace: it generates from nothing
        (everything to fill), the samplers' ``known=`` does the rest."""
        prompts = None if prompt is None else [prompt] * len(x)
        images, masks = (x, m) if method == "concat" else (None, None)
        cond, uncond = model.cond(len(x), prompts=prompts, images=images, masks=masks)
        if prompt is None:         # cond = uncond: guidance (11.4) is the identity, one pass
            eps = model.eps_model
            return lambda x_t, t: eps(x_t, t, cond)
        return model.guided_eps(cond, uncond, guidance)
    return eps_for, model.schedule, model.space, model.config, method


# ----------------------------------------------------------------------------- the command

def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="minidiff inpaint", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a diffusion checkpoint (minidiff train), pixel or latent")
    parser.add_argument("--image", required=True,
                        help="test:I, test:I,J,K or test:A-B (MNIST test indices) or a 28x28 "
                             "grayscale .png")
    parser.add_argument("--mask", default="bottom",
                        help="bottom (default), top, left, right, box:x0,y0,x1,y1 (pixels, x1 "
                             "and y1 excluded) or a 28x28 mask .png (white = fill)")
    parser.add_argument("--n", type=int_arg(1), default=8,
                        help="completions per image (default 8)")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="concat (the default for a model trained with concat or hybrid "
                             "conditioning) or replace (RePaint-style, the default otherwise)")
    parser.add_argument("--prompt", default=None, help="a caption (models trained with text)")
    parser.add_argument("--guidance", type=float_arg(0.0), default=None,
                        help="classifier-free guidance scale (conditioned models; default: "
                             "the model's)")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddim",
                        help="ddim (default) or ddpm")
    parser.add_argument("--steps", type=int_arg(1), default=None,
                        help="sampling steps, 1..T (default: 50 for ddim, T for ddpm)")
    parser.add_argument("--eta", type=float_arg(0.0, 1.0), default=0.0,
                        help="DDIM noise in [0, 1] (default 0)")
    parser.add_argument("--seed", type=int_arg(0), default=0, help="seed (default 0)")
    parser.add_argument("--batch", type=int_arg(1), default=250,
                        help="items (image x completion) per sampler run (default 250)")
    parser.add_argument("--out", default="inpainted.png",
                        help="a .png grid (default inpainted.png) or FILE.npz (module doc)")
    parser.add_argument("--raw", action="store_true",
                        help="the last trained weights instead of their EMA")
    parser.add_argument("--autoencoder", default=None, metavar="AE",
                        help="a latent model's autoencoder, if not at the path it recorded")
    return parser


def save(path, completions, images, source, mask, n: int) -> None:
    """``--out``: the grid (original, masked input, completions per row) or the npz."""
    from minidiff.data import from_unit_range, to_unit_range  # noqa: PLC0415
    from minidiff.images import save_grid  # noqa: PLC0415
    from minidiff.masks import masked_image  # noqa: PLC0415
    host = backend.host
    mask_u8 = (backend.to_host(mask) > 0.5).astype(host.uint8)
    if path.lower().endswith(ARRAY_TYPES):
        backend.save_npz(path, {"images": completions[:, 0], "mask": mask_u8,
                                "source": host.repeat(source, n)})
        return
    m = backend.to_device(mask_u8.astype(host.float32))[None, None]
    shown = from_unit_range(masked_image(to_unit_range(images), m))
    rows = [host.concatenate([images[i:i + 1], shown[i:i + 1], completions[i * n:(i + 1) * n]])
            for i in range(len(images))]
    save_grid(host.concatenate(rows), path, nrow=n + 2)


@command
def main(argv=None) -> int:
    from minidiff.masks import named_mask  # noqa: PLC0415
    from minidiff.paths import resolve_user_path  # noqa: PLC0415
    from minidiff.progress import Progress  # noqa: PLC0415
    args = build_parser().parse_args(argv)
    args.checkpoint = resolve_user_path(args.checkpoint)
    check_input_file("--checkpoint", args.checkpoint)
    check_output_path("--out", args.out, IMAGE_TYPES + ARRAY_TYPES)
    mask = named_mask(args.mask, size=28)
    images, source = load_images(args.image)
    eps_for, schedule, space, config, method = load_inpainter(
        args.checkpoint, args.method, args.prompt, args.guidance, use_ema=not args.raw,
        autoencoder=args.autoencoder)
    if args.autoencoder and space.kind == "pixel":
        raise InpaintError(f"--autoencoder: {args.checkpoint} is a pixel-space model, which "
                           "decodes nothing; the option is for latent models only")
    if args.steps is not None:
        check_int("--steps", args.steps, low=1, high=schedule.num_timesteps)
    completions = complete(eps_for, schedule, space, images, mask, args.n, args.sampler,
                           args.steps, args.eta, args.seed, args.batch, method,
                           progress=Progress(f"inpainting ({method}, {args.sampler})"),
                           variance=config.get("variance", "fixed_small"))
    save(args.out, completions, images, source, mask, args.n)
    print(f"wrote {args.out} ({len(images)} image(s) x {args.n} completions, {method}, "
          f"seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
