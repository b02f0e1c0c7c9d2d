"""``minidiff sample``: draw digits from a training checkpoint.

    minidiff sample --checkpoint runs/quick/checkpoint.npz --out grid.png
    minidiff sample --checkpoint F --sampler ddpm --steps 1000 --n 64 --seed 0 \\
                    --gif denoise.gif --strip strip.png
    minidiff --backend cupy sample --checkpoint F ...       # the same, on the GPU
    minidiff sample --checkpoint data/checkpoints/ldm.npz --out digits.npz   # raw uint8

The model is rebuilt from the configuration stored in the checkpoint and given its EMA
weights (``--raw`` for the last trained weights).  A latent diffusion model (its config
names an ``autoencoder``) samples latents and decodes them with that autoencoder, which must
be the one it was trained on (``minidiff.spaces``).  ``--out`` ending in ``.npz`` writes the
raw digits, uint8 (N, 28, 28) under the name ``images``, instead of a PNG grid.  ``--gif``
animates the whole grid from x_T to x_0; ``--strip`` shows the first digit's reverse process
as one row.
"""
from __future__ import annotations

import sys

from minidiff import backend
from minidiff.data import from_unit_range
from minidiff.diffusion import ddim_sample, ddpm_sample
from minidiff.images import save_gif, save_grid, save_strip
from minidiff.nn.module import StateDictError
from minidiff.paths import resolve_user_path
from minidiff.progress import Progress
from minidiff.spaces import SpaceError, space_from_checkpoint
from minidiff.train.checkpoint import (CheckpointError, eps_model_from_checkpoint,
                                       load_checkpoint)
from minidiff.validation import (ArgumentParser, MinidiffInputError, check_input_file, check_int,
                                 check_output_path, command, float_arg, int_arg)

#: what each output may be written as (--out FILE.npz: the raw uint8 digits)
IMAGE_TYPES, GIF_TYPES, ARRAY_TYPES = (".png", ".jpg", ".jpeg"), (".gif",), (".npz",)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="minidiff sample", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint.npz or ema.npz written by minidiff train")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddim",
                        help="ddim (default; deterministic with --eta 0) or ddpm (ancestral, "
                             "Algorithm 2)")
    parser.add_argument("--steps", type=int_arg(1), default=None,
                        help="sampling steps, 1..T (default: 50 for ddim, T for ddpm)")
    parser.add_argument("--eta", type=float_arg(0.0, 1.0), default=0.0,
                        help="DDIM noise in [0, 1]: 0 deterministic, 1 as much as DDPM")
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
    return parser


def sample(eps_model, schedule, config: dict, sampler: str = "ddim", steps=None, n: int = 64,
           seed: int = 0, eta: float = 0.0, frames: int = 0, progress=None, space=None):
    """``(x0, frames)``: ``n`` samples from ``eps_model`` in ``space`` (default pixels, in
    [-1, 1]; ``space.decode`` turns them into images), frames empty unless asked.  Samples
    with NaN or Inf in them raise ``MinidiffInputError``."""
    steps = steps or min(50 if sampler == "ddim" else schedule.num_timesteps,
                         schedule.num_timesteps)
    check_int("--steps", steps, low=1, high=schedule.num_timesteps)
    backend.manual_seed(seed)
    size = config.get("image_size", 28)
    shape = (n, *(space.shape if space is not None else (1, size, size)))
    kwargs = {"steps": steps, "clip_x0": space.clip_x0 if space is not None else True}
    if sampler == "ddim":
        kwargs["eta"] = eta
    else:                       # the reverse variance the model was trained with (lesson 13)
        kwargs["variance"] = config.get("variance", "fixed_small")
    if frames:
        kwargs.update(return_frames=True, frame_every=max(1, steps // frames))
    run = ddim_sample if sampler == "ddim" else ddpm_sample
    result = run(eps_model, schedule, shape, progress=progress, **kwargs)
    x0, frames = result if frames else (result, [])
    bad = ~backend.xp().isfinite(x0).reshape(n, -1).all(axis=1)
    if bad.any():
        raise MinidiffInputError(
            f"{int(bad.sum())} of {n} samples hold NaN or Inf: the network's output overflowed "
            f"during {sampler} sampling (its weights are finite)",
            "try the EMA weights (without --raw), another checkpoint, or --sampler ddim")
    return x0, frames


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # everything the user typed is checked before the (possibly long) sampling
    args.checkpoint = resolve_user_path(args.checkpoint)   # data/... works from any folder
    check_input_file("--checkpoint", args.checkpoint)
    check_output_path("--out", args.out, IMAGE_TYPES + ARRAY_TYPES)
    if args.gif:
        check_output_path("--gif", args.gif, GIF_TYPES)
    if args.strip:
        check_output_path("--strip", args.strip, IMAGE_TYPES)
    try:
        arrays = load_checkpoint(args.checkpoint)
        eps_model, schedule, config = eps_model_from_checkpoint(args.checkpoint,
                                                                use_ema=not args.raw,
                                                                arrays=arrays)
        space = space_from_checkpoint(arrays, args.autoencoder)
        if args.autoencoder and space.kind == "pixel":
            raise SpaceError(f"--autoencoder: {args.checkpoint} is a pixel-space model, which "
                             "decodes nothing; the option is for latent models only")
    except (CheckpointError, SpaceError) as error:
        print(f"minidiff: {error}", file=sys.stderr)
        return 2
    except StateDictError as error:
        detail = " ".join(str(error).split())
        print(f"minidiff: {args.checkpoint} does not fit the model its config describes: "
              f"{detail}", file=sys.stderr)
        return 2
    if args.steps is not None:
        check_int("--steps", args.steps, low=1, high=schedule.num_timesteps)
    want_frames = args.frames if (args.gif or args.strip) else 0
    x0, frames = sample(eps_model, schedule, config, args.sampler, args.steps, args.n, args.seed,
                        args.eta, want_frames, progress=Progress(f"sampling ({args.sampler})"),
                        space=space)
    digits = from_unit_range(space.decode(x0))
    if args.out.lower().endswith(ARRAY_TYPES):
        backend.save_npz(args.out, {"images": digits[:, 0]})
    else:
        save_grid(digits, args.out)
    print(f"wrote {args.out} ({args.n} digits, {args.sampler}, seed {args.seed})")
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
