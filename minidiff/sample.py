"""``minidiff sample``: draw digits from a training checkpoint.

    minidiff sample --checkpoint runs/quick/checkpoint.npz --out grid.png
    minidiff sample --checkpoint F --sampler ddpm --steps 1000 --n 64 --seed 0 \\
                    --gif denoise.gif --strip strip.png
    minidiff --backend cupy sample --checkpoint F ...       # the same, on the GPU
    minidiff sample --checkpoint data/checkpoints/ldm.npz --out digits.npz   # raw uint8
    minidiff sample --checkpoint F --prompt "a thick seven" --guidance 3 --n 64 --out grid.png
    minidiff sample --checkpoint F --prompt "two" --prompt "a thin 7" --n 8 --out rows.png

The model is rebuilt from the configuration stored in the checkpoint and given its EMA
weights (``--raw`` for the last trained weights).  A latent diffusion model (its config
names an ``autoencoder``) samples latents and decodes them with that autoencoder, which must
be the one it was trained on (``minidiff.spaces``).  ``--out`` ending in ``.npz`` writes the
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
from minidiff import conditioning
from minidiff.data import from_unit_range
from minidiff.diffusion import default_steps, run_sampler
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
    parser.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                        help="a text-conditioned model's caption, e.g. \"a thick seven\"; "
                             "repeat for one row per prompt (--n samples each)")
    parser.add_argument("--guidance", type=float_arg(0.0), default=None, metavar="S",
                        help="classifier-free guidance scale s >= 0 for --prompt, "
                             "eps_u + s (eps_c - eps_u) (11.4): 0 unconditional, 1 the plain "
                             "conditional model; Ho & Salimans' w is s - 1 (default: the "
                             "model's config: 2 for txt2img-quick, 3 for inpaint-quick)")
    return parser


def sample(eps_model, schedule, config: dict, sampler: str = "ddim", steps=None, n: int = 64,
           seed: int = 0, eta: float = 0.0, frames: int = 0, progress=None, space=None):
    """``(x0, frames)``: ``n`` samples from ``eps_model`` in ``space`` (default pixels, in
    [-1, 1]; ``space.decode`` turns them into images), frames empty unless asked.  Samples
    with NaN or Inf in them raise ``MinidiffInputError``."""
    steps = default_steps(schedule, sampler, steps)
    check_int("--steps", steps, low=1, high=schedule.num_timesteps)
    backend.manual_seed(seed)
    size = config.get("image_size", 28)
    shape = (n, *(space.shape if space is not None else (1, size, size)))
    kwargs = {"clip_x0": space.clip_x0 if space is not None else True}
    if frames:
        kwargs.update(return_frames=True, frame_every=max(1, steps // frames))
    # DDPM: the reverse variance the model was trained with (lesson 13)
    result = run_sampler(sampler, eps_model, schedule, shape, steps, eta=eta,
                         variance=config.get("variance", "fixed_small"), progress=progress,
                         **kwargs)
    x0, frames = result if frames else (result, [])
    bad = ~backend.xp().isfinite(x0).reshape(n, -1).all(axis=1)
    if bad.any():
        raise MinidiffInputError(
            f"{int(bad.sum())} of {n} samples hold NaN or Inf: the network's output overflowed "
            f"during {sampler} sampling (its weights are finite)",
            "try the EMA weights (without --raw), another checkpoint, or --sampler ddim")
    return x0, frames


def _conditioned(args, arrays):
    """``(eps_model, prompts, row labels, ConditionedCheckpoint)`` for a conditioned model:
    the prompts (each repeated ``--n`` times; None without --prompt) checked against the
    vocabulary, and the guided eps_theta."""
    loaded = conditioning.load_conditioned(args.checkpoint, use_ema=not args.raw,
                                           autoencoder=args.autoencoder, arrays=arrays)
    kind = conditioning.kind_of(loaded.config)
    if not conditioning.uses_text(loaded.config):
        for flag, value in (("--prompt", args.prompt), ("--guidance", args.guidance)):
            if value is not None:
                raise conditioning.ConditionError(
                    f"{flag}: {args.checkpoint} is conditioned on {kind!r} (a mask and an "
                    "image), not on text; it takes no prompt or guidance")
    prompts = labels = None
    if args.prompt:
        prompts = [text for text in args.prompt for _ in range(args.n)]
        labels = list(args.prompt) if len(args.prompt) > 1 else None
    elif args.guidance is not None:
        raise conditioning.ConditionError("--guidance: guides towards a --prompt; give one "
                                          "(without --prompt the model samples with the empty "
                                          "caption, where guidance changes nothing)")
    n = args.n * len(args.prompt or [None])
    cond, uncond = loaded.cond(n, prompts=prompts)
    eps_model = loaded.guided_eps(cond, uncond, args.guidance) if prompts else \
        (lambda x_t, t: loaded.eps_model(x_t, t, cond))
    if prompts is None and conditioning.uses_text(loaded.config):
        prompts = [""] * n                      # what --out .npz records: the empty caption
    return eps_model, prompts, labels, loaded


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
    prompts = labels = None
    try:
        arrays = load_checkpoint(args.checkpoint)
        if conditioning.kind_of(arrays["config"]) == "none":
            for flag, value in (("--prompt", args.prompt), ("--guidance", args.guidance)):
                if value is not None:
                    raise conditioning.ConditionError(
                        f"{flag}: {args.checkpoint} is an unconditioned model (conditioning "
                        "none); it takes no prompt or guidance")
            eps_model, schedule, config = eps_model_from_checkpoint(args.checkpoint,
                                                                    use_ema=not args.raw,
                                                                    arrays=arrays)
            space = space_from_checkpoint(arrays, args.autoencoder)
        else:
            eps_model, prompts, labels, loaded = _conditioned(args, arrays)
            schedule, config, space = loaded.schedule, loaded.config, loaded.space
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
    n = args.n * len(args.prompt or [None])
    x0, frames = sample(eps_model, schedule, config, args.sampler, args.steps, n, args.seed,
                        args.eta, want_frames, progress=Progress(f"sampling ({args.sampler})"),
                        space=space)
    digits = from_unit_range(space.decode(x0))
    if args.out.lower().endswith(ARRAY_TYPES):
        arrays = {"images": digits[:, 0]}
        if prompts is not None:     # a str array (dtype <U), which loads without pickle
            arrays["prompts"] = backend.host.asarray(prompts, dtype=str)
        backend.save_npz(args.out, arrays)
    else:
        save_grid(digits, args.out, nrow=args.n if labels else None, labels=labels)
    print(f"wrote {args.out} ({n} digits, {args.sampler}, seed {args.seed})")
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
