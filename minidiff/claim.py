"""``minidiff claim``: the article's claim, measured (issue 13, lesson 13).

    minidiff claim [--checkpoints SIMPLE VLB HYBRID] [--full] [--json] [--out DIR]

"Training on the true variational bound yields better codelengths than training on the
simplified objective, but the latter yields the best sample quality" (Ho et al. 2020), and
learned variances get both (Nichol & Dhariwal 2021).  For each checkpoint (by default the
shipped data/checkpoints/claim_{simple,vlb,hybrid}.npz), evaluation only:

* **bits/dim, full bound**: every term of (4.2) on ``--bpd-images`` test images (its standard
  error over the images), split as the DDPM paper's Table 4 into the prior L_T, the
  distortion L_0 (the decoder) and the rate sum_{t>=1} L_t (the KL terms); the three add up
  to the total;
* **bits/dim, Monte-Carlo** on ``--mc-images`` test images: L_T and L_0 exact, the KL terms
  sampled at ``--bpd-samples`` steps per image (``minidiff eval``'s estimate);
* **t sampler**: the variance of the one-draw bound estimate with t uniform and with t drawn
  by the second moment of the per-t terms just measured (13.4);
* **FID** (``--n`` samples) and **classifier confidence**, sampled by DDPM ancestral sampling
  respaced to ``--steps``, each model with its own variance (fixed_small or learned), by
  ``minidiff eval``'s code;
* **samples** side by side, one row per model from the same seed: ``--out``/claim_samples.png.

A markdown table goes to stdout (``--json``: every figure as JSON instead); progress to
stderr.  ``--full`` is the issue's size: 1,000 images for the full bound, 10,000 for the
Monte-Carlo estimate and 10,000 samples for FID (hours on a CPU; see the README).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from minidiff import backend
from minidiff.progress import Progress
from minidiff.validation import (ArgumentParser, MinidiffInputError, check_input_file, check_int,
                                 command, int_arg)

__all__ = ["main", "build_parser", "claim", "markdown_table"]

SHIPPED = tuple(os.path.join("data", "checkpoints", f"claim_{name}.npz")
                for name in ("simple", "vlb", "hybrid"))
#: (default, --full) sizes
SIZES = {"bpd_images": (16, 1_000), "mc_images": (64, 10_000), "n": (500, 10_000)}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="minidiff claim", description=__doc__.split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", default=list(SHIPPED), metavar="NPZ",
                        help="the models to compare, one row each (default: the shipped "
                             "claim_simple, claim_vlb and claim_hybrid)")
    parser.add_argument("--full", action="store_true",
                        help="the issue's sizes: --bpd-images 1000 --mc-images 10000 --n 10000")
    parser.add_argument("--bpd-images", type=int_arg(2, 10_000), default=None,
                        help=f"test images for the full bound (default {SIZES['bpd_images'][0]})")
    parser.add_argument("--mc-images", type=int_arg(2, 10_000), default=None,
                        help="test images for the Monte-Carlo bound (default "
                             f"{SIZES['mc_images'][0]})")
    parser.add_argument("--bpd-samples", type=int_arg(1), default=4,
                        help="sampled KL terms per image in the Monte-Carlo bound (default 4)")
    parser.add_argument("--n", type=int_arg(2), default=None,
                        help=f"samples for FID and confidence (default {SIZES['n'][0]})")
    parser.add_argument("--steps", type=int_arg(1), default=50,
                        help="DDPM sampling steps, respaced (default 50)")
    parser.add_argument("--grid", type=int_arg(1, 64), default=12,
                        help="samples per model in claim_samples.png (default 12)")
    parser.add_argument("--batch", type=int_arg(1), default=250,
                        help="images per forward pass when sampling (default 250)")
    parser.add_argument("--seed", type=int_arg(0), default=0, help="seed (default 0)")
    parser.add_argument("--reference-images", type=int_arg(2, 10_000), default=10_000,
                        help="MNIST test images the FID compares with (default: all 10,000)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the train-vs-test FID floor")
    parser.add_argument("--classifier", default=None,
                        help="feature classifier (default: the shipped classifier.npz)")
    parser.add_argument("--stats-dir", default=os.path.join("runs", "fid_stats"),
                        help="cache of test-set feature statistics (default runs/fid_stats)")
    parser.add_argument("--out", default=os.path.join("runs", "claim"),
                        help="folder for the figures (default runs/claim)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load(path: str):
    """(eps_model, schedule, config) of a pixel diffusion checkpoint, else one clear line."""
    from minidiff.evaluate import autoencoder  # noqa: PLC0415
    from minidiff.spaces import space_from_checkpoint  # noqa: PLC0415
    from minidiff.train.checkpoint import eps_model_from_checkpoint, load_checkpoint  # noqa
    if autoencoder.is_autoencoder(path):
        raise MinidiffInputError(f"--checkpoints: {path} is an autoencoder, expected a pixel "
                                 "diffusion model from minidiff train --preset claim")
    arrays = load_checkpoint(path)
    space = space_from_checkpoint(arrays)
    if space.kind != "pixel":
        raise MinidiffInputError(f"--checkpoints: {path} is a {space.kind} diffusion model, "
                                 "expected a pixel one (the bound is on the pixels)")
    model, schedule, config = eps_model_from_checkpoint(path, arrays=arrays)
    return model, schedule, config, arrays["step"] or None


def _name(path: str) -> str:
    """A row's name: the file's stem (claim_simple), or its run folder's for a run's
    ema.npz / checkpoint.npz."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in ("ema", "checkpoint"):
        return os.path.basename(os.path.dirname(os.path.abspath(path))) or stem
    return stem


def _evaluate_one(path: str, loaded, args, test_images) -> dict:
    """Every figure of one model, ``loaded`` by ``_load`` (see the module docstring)."""
    from minidiff.data import to_unit_range  # noqa: PLC0415
    from minidiff.diffusion.resample import estimator_variance, second_moment_probabilities
    from minidiff.evaluate import evaluate, sample_images  # noqa: PLC0415
    from minidiff.evaluate.likelihood import bound_split, test_bits_per_dim  # noqa: PLC0415
    model, schedule, config, step = loaded
    name = _name(path)
    variance = config.get("variance", "fixed_small")
    row = {"name": name, "checkpoint": path, "step": step,
           "objective": config.get("objective", "simple"), "variance": variance,
           "t_sampler": config.get("t_sampler", "uniform"), "T": schedule.num_timesteps}

    start = time.time()
    backend.manual_seed(args.seed)
    split = bound_split(schedule, model, to_unit_range(test_images[:args.bpd_images]),
                        progress=Progress(f"{name}: full bound", unit="(image, t) pairs"),
                        variance=variance)
    row["bpd_full"] = {"bpd": split["bpd"], "stderr": split["stderr"], "n": args.bpd_images,
                       **{key: float(split[key].mean())
                          for key in ("prior", "distortion", "rate")},
                       "seconds": round(time.time() - start, 2)}
    row["per_t_bits"] = [float(v) for v in split["terms"].mean(axis=0)]
    uniform = estimator_variance(split["terms"])
    second = estimator_variance(split["terms"], second_moment_probabilities(split["terms"]))
    row["t_sampler_variance"] = {"uniform": uniform, "second_moment": second,
                                 "ratio": uniform / second if second > 0 else float("inf")}

    start = time.time()
    backend.manual_seed(args.seed)
    mc = test_bits_per_dim(schedule, model, to_unit_range(test_images[:args.mc_images]),
                           num_samples=args.bpd_samples, batch=100, variance=variance,
                           progress=Progress(f"{name}: Monte-Carlo bound", unit="images"))
    row["bpd_mc"] = {"bpd": mc["bpd"], "stderr": mc["stderr"], "n": mc["n"],
                     "samples_per_image": args.bpd_samples,
                     "seconds": round(time.time() - start, 2)}

    _log(f"{name}: FID and confidence on {args.n} DDPM samples ({args.steps} steps, "
         f"variance {variance})")
    scored = evaluate(argparse.Namespace(
        checkpoint=path, n=args.n, sampler="ddpm", steps=args.steps, eta=0.0,
        batch=args.batch, seed=args.seed, raw_weights=False, bpd_images=0, bpd_samples=1,
        bpd_full=False, reference_images=args.reference_images, no_floor=args.no_floor,
        classifier=args.classifier, stats_dir=args.stats_dir))
    for key in ("fid", "mean_confidence", "class_histogram", "sampling_seconds",
                "fid_floor_train_vs_test", "fid_floor_n"):
        if key in scored:
            row[key] = scored[key]
    backend.manual_seed(args.seed)
    row["grid"] = sample_images(model, schedule, args.grid, "ddpm", args.steps,
                                batch=args.batch, variance=variance)
    return row


def claim(args) -> dict:
    """Every figure of ``minidiff claim`` as a dict: ``models`` (one dict per checkpoint),
    ``settings`` and ``figures``; the sample grids are written to ``args.out``."""
    from minidiff.data import from_unit_range, load_mnist  # noqa: PLC0415
    from minidiff.images import save_grid  # noqa: PLC0415
    begin = time.time()
    loaded = [_load(path) for path in args.checkpoints]      # every file checked first
    for _, schedule, _, _ in loaded:
        check_int("--steps", args.steps, low=1, high=schedule.num_timesteps)
    test_images, _ = load_mnist("test")
    rows = []
    for i, path in enumerate(args.checkpoints):
        _log(f"[{i + 1}/{len(args.checkpoints)}] {path}")
        rows.append(_evaluate_one(path, loaded[i], args, test_images))
    xp = backend.xp()
    grids = [row.pop("grid") for row in rows]
    os.makedirs(args.out, exist_ok=True)
    samples_png = os.path.join(args.out, "claim_samples.png")
    save_grid(from_unit_range(xp.concatenate(grids)), samples_png, nrow=args.grid,
              labels=[row["name"] for row in rows])
    settings = {key: getattr(args, key) for key in
                ("bpd_images", "mc_images", "bpd_samples", "n", "steps", "seed",
                 "reference_images")}
    return {"models": rows, "settings": {**settings, "sampler": "ddpm",
                                         "backend": backend.get_backend()},
            "figures": [samples_png], "seconds": round(time.time() - begin, 1)}


def markdown_table(result: dict) -> str:
    """The measured table: one row per model, bits/dim with their standard errors."""
    s = result["settings"]
    head = ("| model | objective | variance | bits/dim, full bound | bits/dim, Monte-Carlo | "
            "L_T (prior) | L_0 (distortion) | sum L_t-1 (rate) | FID | confidence |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in result["models"]:
        full, mc = r["bpd_full"], r["bpd_mc"]
        lines.append(
            f"| {r['name']} | {r['objective']} | {r['variance']} | {full['bpd']:.3f} ± "
            f"{full['stderr']:.3f} | {mc['bpd']:.3f} ± {mc['stderr']:.3f} | "
            f"{full['prior']:.5f} | {full['distortion']:.3f} | {full['rate']:.3f} | "
            f"{r['fid']:.2f} | {r['mean_confidence']:.3f} |")
    floor = next((r["fid_floor_train_vs_test"] for r in result["models"]
                  if "fid_floor_train_vs_test" in r), None)
    notes = [f"Full bound on {s['bpd_images']} test images (± one standard error over the "
             f"images), Monte-Carlo on {s['mc_images']} ({s['bpd_samples']} sampled KL terms "
             f"per image, L_T and L_0 exact); bits/dim, an upper bound on the NLL. FID "
             f"(minidiff's MNIST classifier) and confidence from {s['n']} DDPM samples, "
             f"{s['steps']} respaced steps, seed {s['seed']}, each model with its own variance"
             + (f"; FID floor (training vs test images) {floor:.2f}." if floor is not None
                else ".")]
    for r in result["models"]:
        v = r["t_sampler_variance"]
        notes.append(f"{r['name']}: variance of the one-draw bound estimate (bits/dim^2) "
                     f"{v['uniform']:.4g} with t uniform, {v['second_moment']:.4g} with t "
                     f"drawn by the second moment ({v['ratio']:.3g}x less)")
    notes.append(f"samples (one row per model, same seed): {result['figures'][0]}; "
                 f"{result['seconds']} s in all")
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


@command
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    for key, (small, full) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, full if args.full else small)
    from minidiff.paths import resolve_user_path  # noqa: PLC0415
    args.checkpoints = [resolve_user_path(path) for path in args.checkpoints]
    for path in args.checkpoints:
        check_input_file("--checkpoints", path,
                         "train the three models (README: the claim) or pass --checkpoints")
    if args.classifier:
        check_input_file("--classifier", args.classifier)
    for name, folder in (("--out", args.out), ("--stats-dir", args.stats_dir)):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise MinidiffInputError(f"{name}: {folder} is a file, expected a folder")
    result = claim(args)
    print(json.dumps(result, indent=2) if args.json else markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
