"""The article's claim, measured (lesson 13; the command and its options:
``minidiff.commands.claim``, the method: docs/the-claim.md).

"Training on the true variational bound yields better codelengths than training on the
simplified objective, but the latter yields the best sample quality" (Ho et al. 2020), and
learned variances get both (Nichol & Dhariwal 2021).  ``claim(args)`` measures each
checkpoint -- the full bound split into prior, distortion and rate, its Monte-Carlo estimate,
FID and confidence of DDPM samples, a grid -- and ``markdown_table`` writes the result.
"""

from __future__ import annotations

import os
import time

from minidiff import backend
from minidiff.data.images import save_grid
from minidiff.data.mnist import from_unit_range, load_mnist, to_unit_range
from minidiff.diffusion import OBJECTIVES
from minidiff.diffusion.resample import estimator_variance, second_moment_probabilities
from minidiff.errors import MinidiffInputError, check_int
from minidiff.evaluate import autoencoder
from minidiff.evaluate.likelihood import bound_split, test_bits_per_dim
from minidiff.evaluate.model import evaluate
from minidiff.pipelines.load import load_pipeline
from minidiff.pipelines.sample import sample_images
from minidiff.progress import Progress, note

__all__ = ["claim", "markdown_table"]

SHIPPED = tuple(os.path.join("data", "checkpoints", f"claim_{name}.npz")
                for name in OBJECTIVES)
#: (default, --full) sizes
SIZES = {"bpd_images": (16, 1_000), "mc_images": (64, 10_000), "n": (500, 10_000)}


def _load(path: str):
    """(eps_model, schedule, config) of a pixel diffusion checkpoint, else one clear line."""
    if autoencoder.is_autoencoder(path):
        raise MinidiffInputError(f"--checkpoints: {path} is an autoencoder, expected a pixel "
                                 "diffusion model from minidiff train --preset claim")
    pipeline = load_pipeline(path)
    if pipeline.space.kind != "pixel" or pipeline.kind != "none":
        raise MinidiffInputError(f"--checkpoints: {path} is a {pipeline.space.kind} diffusion "
                                 f"model conditioned on {pipeline.kind!r}, expected an "
                                 "unconditioned pixel one (the bound is on the pixels)")
    return pipeline


def _name(path: str) -> str:
    """A row's name: the file's stem (claim_simple), or its run folder's for a run's
    ema.npz / checkpoint.npz."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in ("ema", "checkpoint"):
        return os.path.basename(os.path.dirname(os.path.abspath(path))) or stem
    return stem


def _evaluate_one(path: str, loaded, args, test_images) -> dict:
    """Every figure of one model, ``loaded`` by ``_load`` (see the module docstring)."""
    model, schedule, config, step = loaded.eps(), loaded.schedule, loaded.config, loaded.step
    name = _name(path)
    variance = config["variance"]
    row = {"name": name, "checkpoint": path, "step": step or None,
           "objective": config["objective"], "variance": variance,
           "t_sampler": config["t_sampler"], "T": schedule.num_timesteps}

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

    note(f"{name}: FID and confidence on {args.n} DDPM samples ({args.steps} steps, "
         f"variance {variance})")
    scored = evaluate(loaded, args.n, "ddpm", args.steps, batch=args.batch, seed=args.seed,
                      classifier=args.classifier, stats_dir=args.stats_dir,
                      reference_images=args.reference_images, floor=not args.no_floor,
                      bpd_images=0)
    for key in ("fid", "mean_confidence", "class_histogram", "sampling_seconds",
                "fid_floor_train_vs_test", "fid_floor_n"):
        if key in scored:
            row[key] = scored[key]
    row["grid"], _ = sample_images(model, schedule, loaded.space, args.grid, "ddpm",
                                   args.steps, seed=args.seed, batch=args.batch,
                                   variance=variance)
    return row


def claim(args) -> dict:
    """Every figure of ``minidiff claim`` as a dict: ``models`` (one dict per checkpoint),
    ``settings`` and ``figures``; the sample grids are written to ``args.out``."""
    begin = time.time()
    loaded = [_load(path) for path in args.checkpoints]      # every file checked first
    for schedule in (pipeline.schedule for pipeline in loaded):
        check_int("--steps", args.steps, low=1, high=schedule.num_timesteps)
    test_images, _ = load_mnist("test")
    rows = []
    for i, path in enumerate(args.checkpoints):
        note(f"[{i + 1}/{len(args.checkpoints)}] {path}")
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
