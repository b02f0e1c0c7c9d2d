"""``minidiff sample``: draw digits from a training checkpoint.

    minidiff sample --checkpoint runs/quick/checkpoint.npz --out grid.png
    minidiff sample --checkpoint F --sampler ddpm --steps 1000 --n 64 --seed 0 \\
                    --gif denoise.gif --strip strip.png
    minidiff --backend cupy sample --checkpoint F ...       # the same, on the GPU
    minidiff sample --checkpoint data/checkpoints/ldm.npz --out digits.npz   # raw uint8
    minidiff sample --checkpoint F --prompt "a thick seven" --guidance 3 --n 64 --out grid.png
    minidiff sample --checkpoint F --prompt "two" --prompt "a thin 7" --n 8 --out rows.png

The model is rebuilt from the configuration stored in the checkpoint and given its EMA
weights (``--raw`` for the last trained weights); it is sampled as its config says (its
``sampler`` in ``sample_steps`` steps; a file written before the key: DDIM, 50 steps) unless
``--sampler`` / ``--steps`` say otherwise.  A latent diffusion model (its config
names an ``autoencoder``) samples latents and decodes them with that autoencoder, which must
be the one it was trained on (``minidiff.data.spaces``).  ``--out`` ending in ``.npz`` writes the
raw digits, uint8 (N, 28, 28) under the name ``images``, instead of a PNG grid.  ``--gif``
animates the whole grid from x_T to x_0; ``--strip`` shows the first digit's reverse process
as one row.

A text-conditioned model (lesson 11) takes ``--prompt`` (a caption in its vocabulary) and
``--guidance`` s (classifier-free guidance eps_u + s (eps_c - eps_u), lesson 11 (11.4); default:
the ``guidance`` of its config; 0 is the unconditional model, 1 the plain conditional one;
Ho & Salimans' (2022) w is s - 1).  ``--n`` is the number of samples *per
prompt*: one prompt gives a square grid; several give one row of n per prompt, in the order
given, labelled.  ``--out x.npz`` then also stores each sample's prompt under ``prompts`` (an
array of str).  Without ``--prompt`` a conditioned model samples with the empty caption --
its unconditional mode, learnt through caption dropout -- and a model trained with a
concatenated mask generates from nothing (the whole image to fill).  An unconditioned model
refuses ``--prompt`` and ``--guidance``.
"""
from __future__ import annotations

import sys

from minidiff import backend
from minidiff.commands._args import (ArgumentParser, add_sampler_options, command, float_arg,
                                     int_arg)
from minidiff.config.vocabulary import uses_text
from minidiff.data.images import save_gif, save_grid, save_strip
from minidiff.data.mnist import from_unit_range
from minidiff.data.paths import resolve_user_path
from minidiff.data.spaces import SpaceError
from minidiff.diffusion.guidance import MAX_GUIDANCE
from minidiff.errors import check_input_file, check_output_path, check_outputs
from minidiff.models.conditioned import ConditionError
from minidiff.pipelines.load import load_pipeline, model_sampler
from minidiff.pipelines.sample import check_sample_count, sample_images
from minidiff.progress import Progress

#: what each output may be written as (--out FILE.npz: the raw uint8 digits)
IMAGE_TYPES, GIF_TYPES, ARRAY_TYPES = (".png", ".jpg", ".jpeg"), (".gif",), (".npz",)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="minidiff sample", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint.npz or ema.npz written by minidiff train")
    add_sampler_options(parser)
    parser.add_argument("--n", type=int_arg(1), default=64, help="number of digits (default 64)")
    parser.add_argument("--seed", type=int_arg(0), default=0,
                        help="seed of the noise x_T and of every draw (default 0; the same "
                             "seed gives the same digits)")
    parser.add_argument("--out", default="samples.png",
                        help="the grid of digits, .png (default samples.png), or FILE.npz for "
                             "the raw uint8 digits, shape (N, 28, 28), under the name 'images'")
    parser.add_argument("--gif", help="also write the denoising animation here (.gif)")
    parser.add_argument("--strip", help="also write the first digit's reverse process here "
                        "(.png)")
    parser.add_argument("--frames", type=int_arg(1), default=20,
                        help="frames in --gif / --strip (default 20)")
    parser.add_argument("--raw", action="store_true",
                        help="use the last trained weights instead of their EMA "
                             "(needs checkpoint.npz, not the ema.npz export)")
    parser.add_argument("--autoencoder", default=None, metavar="AE",
                        help="a latent model's autoencoder, if not at the path it recorded")
    parser.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                        help="a text-conditioned model's caption, e.g. \"a thick seven\"; "
                             "repeat for one row per prompt (--n samples each)")
    parser.add_argument("--guidance", type=float_arg(0.0, MAX_GUIDANCE), default=None,
                        metavar="S", help="classifier-free guidance scale s in [0, 100] for "
                        "--prompt, eps_u + s (eps_c - eps_u) (11.4): 0 unconditional, 1 the "
                        "plain conditional model; Ho & Salimans' w is s - 1 (default: the "
                        "model's config: 2 for txt2img-quick, 3 for inpaint-quick)")
    return parser


def _prompts(args, pipeline):
    """``(eps_model, prompts, row labels)``: the prompts (each repeated ``--n`` times; None
    without --prompt, the empty caption for a text model) checked against the vocabulary,
    and the (guided) eps_theta of all the samples."""
    if not uses_text(pipeline.config):
        for flag, value in (("--prompt", args.prompt), ("--guidance", args.guidance)):
            if value is not None:
                raise ConditionError(
                    f"{flag}: {args.checkpoint} is conditioned on {pipeline.kind!r}, not on "
                    "text; it takes no prompt or guidance")
    prompts = labels = None
    if args.prompt:
        prompts = [text for text in args.prompt for _ in range(args.n)]
        labels = list(args.prompt) if len(args.prompt) > 1 else None
    elif args.guidance is not None:
        raise ConditionError("--guidance: guides towards a --prompt; give one (without "
                             "--prompt the model samples with the empty caption, where "
                             "guidance changes nothing)")
    n = args.n * len(args.prompt or [None])
    cond, uncond = pipeline.cond(n, prompts=prompts)
    eps_model = pipeline.eps(cond, uncond if prompts else None, args.guidance)
    if prompts is None and uses_text(pipeline.config):
        prompts = [""] * n                      # what --out .npz records: the empty caption
    return eps_model, prompts, labels


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # everything the user typed is checked before the (possibly long) sampling
    # data/... works from any folder
    args.checkpoint = resolve_user_path(args.checkpoint, "--checkpoint")
    check_input_file("--checkpoint", args.checkpoint)
    check_output_path("--out", args.out, IMAGE_TYPES + ARRAY_TYPES)
    if args.gif:
        check_output_path("--gif", args.gif, GIF_TYPES)
    if args.strip:
        check_output_path("--strip", args.strip, IMAGE_TYPES)
    check_outputs({"--out": args.out, "--gif": args.gif, "--strip": args.strip},
                  {"--checkpoint": args.checkpoint, "--autoencoder": args.autoencoder})
    want_frames = args.frames if (args.gif or args.strip) else 0
    n = args.n * len(args.prompt or [None])
    several = args.prompt and len(args.prompt) > 1
    check_sample_count("--n", n, frames=want_frames,
                       what=f"samples ({len(args.prompt)} prompts x --n {args.n:,})"
                       if several else "samples")
    pipeline = load_pipeline(args.checkpoint, use_ema=not args.raw, autoencoder=args.autoencoder)
    check_outputs({"--out": args.out, "--strip": args.strip},     # and the recorded one
                  {"the autoencoder of the checkpoint": getattr(pipeline.space, "path", None)})
    if args.autoencoder and pipeline.space.kind == "pixel":
        raise SpaceError(f"--autoencoder: {args.checkpoint} is a pixel-space model, which "
                         "decodes nothing; the option is for latent models only")
    eps_model, prompts, labels = _prompts(args, pipeline)
    sampler, steps = model_sampler(pipeline.config, args.sampler, args.steps)
    space = pipeline.space
    images, frames = sample_images(eps_model, pipeline.schedule, space, n, sampler, steps,
                                   args.eta, args.seed, variance=pipeline.config["variance"],
                                   frames=want_frames,
                                   progress=Progress(f"sampling ({sampler}, {steps} steps)"))
    digits = from_unit_range(images)
    if args.out.lower().endswith(ARRAY_TYPES):
        arrays = {"images": digits[:, 0]}
        if prompts is not None:     # a str array (dtype <U), which loads without pickle
            arrays["prompts"] = backend.host.asarray(prompts, dtype=str)
        backend.save_npz(args.out, arrays)
    else:
        save_grid(digits, args.out, nrow=args.n if labels else None, labels=labels)
    print(f"wrote {args.out} ({n} digits, {sampler} {steps} steps, seed {args.seed})")
    if args.gif:
        save_gif([from_unit_range(space.decode(f)) for f in frames], args.gif)
        print(f"wrote {args.gif} ({len(frames)} frames)")
    if args.strip:
        save_strip(backend.host.concatenate([from_unit_range(space.decode(f[:1]))
                                             for f in frames]), args.strip)
        print(f"wrote {args.strip}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
