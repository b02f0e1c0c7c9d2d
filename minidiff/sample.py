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

import argparse
import sys

from minidiff import backend
from minidiff.data import from_unit_range
from minidiff.diffusion import ddim_sample, ddpm_sample
from minidiff.images import save_gif, save_grid, save_strip
from minidiff.nn.module import StateDictError
from minidiff.spaces import SpaceError, space_from_checkpoint
from minidiff.train.checkpoint import (CheckpointError, eps_model_from_checkpoint,
                                       load_checkpoint)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minidiff sample",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint from minidiff train")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddim")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: 50 for ddim, T for ddpm)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0: deterministic)")
    parser.add_argument("--n", type=int, default=64, help="number of digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples.png",
                        help="PNG grid to write, or FILE.npz for the raw uint8 digits")
    parser.add_argument("--gif", help="also write the denoising animation here")
    parser.add_argument("--strip", help="also write one digit's reverse process here")
    parser.add_argument("--frames", type=int, default=20, help="frames in --gif / --strip")
    parser.add_argument("--raw", action="store_true", help="use the raw, not the EMA, weights")
    parser.add_argument("--autoencoder", default=None, metavar="AE",
                        help="a latent model's autoencoder, if not at the path it recorded")
    return parser


def sample(eps_model, schedule, config: dict, sampler: str = "ddim", steps=None, n: int = 64,
           seed: int = 0, eta: float = 0.0, frames: int = 0, space=None):
    """``(x0, frames)``: ``n`` samples from ``eps_model`` in ``space`` (default pixels, in
    [-1, 1]; ``space.decode`` turns them into images), frames empty unless asked."""
    steps = steps or (50 if sampler == "ddim" else schedule.num_timesteps)
    backend.manual_seed(seed)
    size = config.get("image_size", 28)
    shape = (n, *(space.shape if space is not None else (1, size, size)))
    kwargs = {"steps": steps, "clip_x0": space.clip_x0 if space is not None else True}
    if sampler == "ddim":
        kwargs["eta"] = eta
    if frames:
        kwargs.update(return_frames=True, frame_every=max(1, steps // frames))
    run = ddim_sample if sampler == "ddim" else ddpm_sample
    result = run(eps_model, schedule, shape, **kwargs)
    return result if frames else (result, [])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 1 or (args.steps is not None and args.steps < 1):
        print("minidiff: --n and --steps must be positive", file=sys.stderr)
        return 2
    try:
        arrays = load_checkpoint(args.checkpoint)
        eps_model, schedule, config = eps_model_from_checkpoint(args.checkpoint,
                                                                use_ema=not args.raw,
                                                                arrays=arrays)
        space = space_from_checkpoint(arrays, args.autoencoder)
    except (CheckpointError, SpaceError) as error:
        print(f"minidiff: {error}", file=sys.stderr)
        return 2
    except StateDictError as error:
        detail = " ".join(str(error).split())
        print(f"minidiff: {args.checkpoint} does not fit the model its config describes: "
              f"{detail}", file=sys.stderr)
        return 2
    want_frames = args.frames if (args.gif or args.strip) else 0
    x0, frames = sample(eps_model, schedule, config, args.sampler, args.steps, args.n, args.seed,
                        args.eta, want_frames, space)
    digits = from_unit_range(space.decode(x0))
    if args.out.lower().endswith(".npz"):
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
