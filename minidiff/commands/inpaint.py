"""``minidiff inpaint``: fill the masked part of MNIST digits with a diffusion model (lesson 11).

    minidiff inpaint --checkpoint data/checkpoints/ldm.npz --image test:123 --mask bottom \\
                     --n 8 --out out.png
    minidiff inpaint --checkpoint F --image test:0-499 --mask box:0,14,28,28 --n 1 --out c.npz
    minidiff inpaint --checkpoint F --image digit.png --mask mask.png --method replace

Two methods, one per kind of model:

* **concat** (a model trained with ``conditioning`` concat or hybrid, ``config.vocabulary``):
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
grayscale PNG (white digit on black, as MNIST; one drawn dark on light is inverted, with a
note).  ``--out x.png``: one row per image, the original, the masked input (mid-grey where to fill), then the ``--n`` completions;
``--out x.npz``: ``images`` uint8 (N * n, 28, 28), image-major (all completions of the first
image first), ``source`` (N * n,) the test index of each (-1 for a PNG) and ``mask`` uint8
(28, 28), 1 = filled.  All images x completions go through the sampler together, ``--batch``
at a time: the checkpoint's own (its config's ``sampler`` in ``sample_steps`` steps; a file
written before the key: DDIM, 50 steps) unless ``--sampler`` / ``--steps`` say otherwise.
"""
import sys

from minidiff import backend
from minidiff.commands._args import (ArgumentParser, add_sampler_options, command, float_arg,
                                     int_arg)
from minidiff.data.images import save_grid
from minidiff.data.masks import masked_image, named_mask
from minidiff.data.mnist import from_unit_range, to_unit_range
from minidiff.data.paths import resolve_user_path
from minidiff.diffusion.guidance import MAX_GUIDANCE
from minidiff.errors import check_input_file, check_output_path, check_outputs
from minidiff.pipelines.inpaint import InpaintError, METHODS, complete, load_images, load_inpainter
from minidiff.pipelines.load import model_sampler
from minidiff.pipelines.sample import check_sample_count
from minidiff.progress import Progress

#: what --out may be written as (FILE.npz: the raw uint8 completions)
IMAGE_TYPES, ARRAY_TYPES = (".png", ".jpg", ".jpeg"), (".npz",)


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
    parser.add_argument("--guidance", type=float_arg(0.0, MAX_GUIDANCE), default=None,
                        help="classifier-free guidance scale s in [0, 100] with --prompt, "
                             "eps_u + s (eps_c - eps_u) (11.4); Ho & Salimans' w is s - 1 "
                             "(default: the model's config)")
    parser.add_argument("--image-guidance", type=float_arg(0.0, MAX_GUIDANCE), default=None,
                        metavar="S", help="concat models: guidance over the known part of the "
                        "image, eps_u + s (eps_c - eps_u) with eps_u given nothing known; s > 1 "
                        "leans towards the likeliest completion, 1 the plain model (not with "
                        "--guidance; default: the model's config when no --prompt is given)")
    add_sampler_options(parser)
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
    args = build_parser().parse_args(argv)
    args.checkpoint = resolve_user_path(args.checkpoint, "--checkpoint")
    check_input_file("--checkpoint", args.checkpoint)
    check_output_path("--out", args.out, IMAGE_TYPES + ARRAY_TYPES)
    check_outputs({"--out": args.out}, {"--checkpoint": args.checkpoint, "--image": args.image,
                                        "--mask": args.mask, "--autoencoder": args.autoencoder})
    mask = named_mask(args.mask, size=28)
    images, source = load_images(args.image, note=lambda text: print(f"minidiff: {text}",
                                                                      file=sys.stderr))
    check_sample_count("--n", len(images) * args.n,
                       what=f"completions ({len(images):,} image(s) of --image x --n {args.n:,})")
    eps_for, schedule, space, config, method = load_inpainter(
        args.checkpoint, args.method, args.prompt, args.guidance, use_ema=not args.raw,
        autoencoder=args.autoencoder, image_guidance=args.image_guidance)
    check_outputs({"--out": args.out},
                  {"the autoencoder of the checkpoint": getattr(space, "path", None)})
    if args.autoencoder and space.kind == "pixel":
        raise InpaintError(f"--autoencoder: {args.checkpoint} is a pixel-space model, which "
                           "decodes nothing; the option is for latent models only")
    sampler, steps = model_sampler(config, args.sampler, args.steps)
    completions = complete(eps_for, schedule, space, images, mask, args.n, sampler, steps,
                           args.eta, args.seed, args.batch, method,
                           progress=Progress(f"inpainting ({method}, {sampler}, {steps} steps)"),
                           variance=config["variance"])
    save(args.out, completions, images, source, mask, args.n)
    print(f"wrote {args.out} ({len(images)} image(s) x {args.n} completions, {method}, "
          f"{sampler} {steps} steps, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
