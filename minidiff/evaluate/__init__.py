"""``minidiff eval``: how good is a trained diffusion model?  (Given an autoencoder checkpoint,
it reports reconstruction figures instead: ``autoencoder.py``.)

    minidiff eval --checkpoint runs/quick/checkpoint.npz [--n 10000] [--sampler ddim --steps 50]
                  [--bpd-images 256 | --bpd-full] [--json]
    minidiff eval --checkpoint F --inpainting [--n 100] [--mask bottom] [--method replace]
    minidiff eval --checkpoint F --prompts [--per-prompt 20] [--guidance 3] [--inpainting]
    minidiff eval train-classifier [--epochs 3]      (re-train the shipped feature classifier)

Figures:

* **FID** (``fid.py``) between ``--n`` generated samples and the 10,000 MNIST test images, on
  the 128-d penultimate features of minidiff's own MNIST classifier (``classifier.py``,
  shipped in data/checkpoints/classifier.npz).  An MNIST-specific FID, *not* Inception FID:
  comparable only between minidiff runs.  FID is biased upward for small sample counts, so
  the count is printed with it, and the train-vs-test FID at the same count is printed as the
  floor (what a generator reproducing the data distribution would score).  The test-set (and
  floor) statistics are cached under ``--stats-dir``, keyed by the classifier's checksum.
* **classifier confidence**: the mean max-softmax probability of the samples and their
  predicted-class histogram (a collapse onto a few digits shows up here).
* **bits/dim** (``likelihood.py``): the variational bound on the NLL of test images, a
  Monte-Carlo estimate with its standard error (``--bpd-images``, ``--bpd-samples``) or the
  full T-term bound (``--bpd-full``).

* **inpainting accuracy** (``--inpainting``, ``inpainting.py``; instead of the figures
  above): the fraction of the first ``--n`` test digits (default 100), masked by ``--mask``
  and completed by the model, that the classifier gives their true label, with the masked
  input's and the originals' accuracy as bounds.
* **prompted accuracy and attribute adherence** (``--prompts``, ``prompts.py``; a text model,
  instead of the figures above): the fraction of ``--per-prompt`` samples per digit word that
  the classifier labels as prompted, their diversity and FID; and how far "thick" / "thin"
  and "slanted" / "upright" prompts separate on the measured attribute.  With
  ``--inpainting`` too, the inpainting accuracy follows.

A latent diffusion model (``minidiff.spaces``) samples latents and decodes them with the
autoencoder it was trained on before they are scored; its bits/dim are not reported (the
bound would be on latents, not on the images' pixels).
"""
from __future__ import annotations

import json
import os
import sys
import time

from minidiff import backend
from minidiff.progress import Progress
from minidiff.validation import (ArgumentParser, MinidiffInputError, check_input_file, check_int,
                                 command, float_arg, int_arg)

__all__ = ["main", "evaluate", "build_parser", "reference_statistics", "floor_statistics"]

DEFAULT_STATS_DIR = os.path.join("runs", "fid_stats")
#: default Monte-Carlo bits/dim: images x timesteps per image (see the README for the cost)
BPD_IMAGES, BPD_SAMPLES = 256, 4
#: test digits --inpainting completes unless --n says otherwise
INPAINT_N = 100
#: samples per prompt of --prompts unless --per-prompt says otherwise (1,000 samples in all)
PER_PROMPT = 20


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="minidiff eval", description="FID, classifier confidence and bits/dim of a "
        "checkpoint ('minidiff eval train-classifier --help' re-trains the classifier)")
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint.npz or ema.npz written by minidiff train")
    parser.add_argument("--n", type=int_arg(2), default=None,
                        help="samples to generate for FID (default 10,000; fewer are biased), "
                             f"or test digits to inpaint (default {INPAINT_N})")
    parser.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim",
                        help="ddim (default) or ddpm")
    parser.add_argument("--steps", type=int_arg(0), default=50,
                        help="sampling steps, 1..T (default 50; 0 = all T)")
    parser.add_argument("--eta", type=float_arg(0.0, 1.0), default=0.0,
                        help="DDIM eta in [0, 1] (0 = deterministic)")
    parser.add_argument("--batch", type=int_arg(1), default=250,
                        help="images per forward pass (default 250)")
    parser.add_argument("--seed", type=int_arg(0), default=0,
                        help="seed of the samples (default 0)")
    parser.add_argument("--raw-weights", action="store_true",
                        help="use the raw weights instead of the EMA weights")
    parser.add_argument("--bpd-images", type=int_arg(0, 10_000), default=BPD_IMAGES,
                        help=f"test images for bits/dim (0 skips it; default {BPD_IMAGES})")
    parser.add_argument("--bpd-samples", type=int_arg(1), default=BPD_SAMPLES,
                        help="random timesteps per image for the Monte-Carlo bound "
                             f"(default {BPD_SAMPLES})")
    parser.add_argument("--bpd-full", action="store_true",
                        help="the full bound: all T terms per image (T forward passes each)")
    parser.add_argument("--reference-images", type=int_arg(2, 10_000), default=10_000,
                        help="MNIST test images the FID compares with (default: all 10,000)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the train-vs-test FID floor")
    parser.add_argument("--classifier", default=None,
                        help="feature classifier (default: the shipped "
                             "data/checkpoints/classifier.npz)")
    parser.add_argument("--stats-dir", default=DEFAULT_STATS_DIR,
                        help=f"cache of test-set feature statistics (default {DEFAULT_STATS_DIR})")
    parser.add_argument("--inpainting", action="store_true",
                        help="measure inpainting accuracy instead (inpainting.py)")
    parser.add_argument("--mask", default="bottom",
                        help="with --inpainting: the mask (as minidiff inpaint; default bottom)")
    parser.add_argument("--method", choices=("concat", "replace"), default=None,
                        help="with --inpainting: concat or replace (default: the model's)")
    parser.add_argument("--prompts", action="store_true",
                        help="a text model's prompted accuracy, FID and attribute adherence "
                             "instead (prompts.py); with --inpainting, its inpainting "
                             "accuracy too")
    parser.add_argument("--per-prompt", type=int_arg(1), default=None,
                        help=f"with --prompts: samples per prompt (default {PER_PROMPT})")
    parser.add_argument("--guidance", type=float_arg(0.0), default=None, metavar="S",
                        help="with --prompts: classifier-free guidance scale s >= 0, "
                             "eps_u + s (eps_c - eps_u) (11.4): 0 unconditional, 1 the plain "
                             "conditional model; Ho & Salimans' w is s - 1 (default: the "
                             "model's config)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    return parser


def _log(quiet: bool, message: str) -> None:
    """A progress message on stderr (so that --json output on stdout stays clean)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _cached_stats(path_key: str, stats_dir: str, compute):
    """(mu, cov) from ``stats_dir/<path_key>.npz``, computing and saving it when absent."""
    path = os.path.join(stats_dir, path_key + ".npz")
    if os.path.exists(path):
        try:
            arrays = backend.load_npz(path)
            return backend.to_device(arrays["mu"]), backend.to_device(arrays["cov"]), True
        except (ValueError, KeyError):
            pass  # a damaged cache is recomputed
    mu, cov = compute()
    backend.save_npz(path, {"mu": mu, "cov": cov})
    return mu, cov, False


def _features_of(classifier, images_uint8):
    from minidiff.data import to_unit_range  # noqa: PLC0415
    from minidiff.evaluate.classifier import classify  # noqa: PLC0415
    feats, _ = classify(classifier, to_unit_range(images_uint8))
    return feats


def reference_statistics(classifier, checksum: str, stats_dir: str = DEFAULT_STATS_DIR,
                         reference_images: int = 10_000):
    """``(mu, cov, cached, n)``: the Gaussian of the classifier's features of the first
    ``reference_images`` MNIST test images (all 10,000 by default), cached in ``stats_dir``
    under the classifier's ``checksum`` (``fid.py``)."""
    from minidiff.data import load_mnist  # noqa: PLC0415
    from minidiff.evaluate.fid import gaussian_stats  # noqa: PLC0415
    test_images, _ = load_mnist("test")
    n_ref = min(max(reference_images, 2), len(test_images))
    key = f"test_{checksum}" + ("" if n_ref == len(test_images) else f"_first{n_ref}")
    mu, cov, hit = _cached_stats(
        key, stats_dir, lambda: gaussian_stats(_features_of(classifier, test_images[:n_ref])))
    return mu, cov, hit, n_ref


def floor_statistics(classifier, checksum: str, stats_dir: str, n: int):
    """``(mu, cov, n)`` of the classifier's features of ``n`` random training images (at most
    60,000; seed 0): the FID floor's side, cached in ``stats_dir`` under the ``checksum``."""
    from minidiff.data import load_mnist  # noqa: PLC0415
    from minidiff.evaluate.fid import gaussian_stats  # noqa: PLC0415
    n_floor = min(n, 60_000)

    def floor_stats():
        train_images, _ = load_mnist("train")
        pick = backend.host.random.default_rng(0).permutation(len(train_images))[:n_floor]
        return gaussian_stats(_features_of(classifier, train_images[pick]))
    mu, cov, _ = _cached_stats(f"train_{checksum}_n{n_floor}", stats_dir, floor_stats)
    return mu, cov, n_floor


def sample_images(model, schedule, n, sampler="ddim", steps=50, eta=0.0, batch=250,
                  quiet=True, space=None, variance="fixed_small"):
    """``n`` images in [-1, 1], (n, C, H, W), on the active backend: samples of ``space``
    (default pixels) decoded."""
    from minidiff.diffusion import run_sampler  # noqa: PLC0415
    xp = backend.xp()
    c = model.config
    chunks, done = [], 0
    per_batch = steps or schedule.num_timesteps
    total = -(-n // batch) * per_batch
    progress = None if quiet else Progress(f"sampling {n} images ({sampler})")
    while done < n:
        size = min(batch, n - done)
        shape = (size, c.in_channels, c.image_size, c.image_size)
        offset = done // batch * per_batch
        hook = None if progress is None else (lambda i, _, o=offset: progress(o + i, total))
        clip = space.clip_x0 if space is not None else True
        x = run_sampler(sampler, model, schedule, shape, steps or None, eta=eta,
                        variance=variance, clip_x0=clip, progress=hook)
        if space is not None:
            x = space.decode(x)
        if not bool(xp.isfinite(x).all()):
            raise MinidiffInputError("the samples hold NaN or Inf: the network's output "
                                     f"overflowed during {sampler} sampling (its weights "
                                     "are finite)", "try the EMA weights or another checkpoint")
        chunks.append(xp.clip(x, -1.0, 1.0))
        done += size
    return xp.concatenate(chunks)


def evaluate(args, quiet: bool = False) -> dict:
    """Every figure of ``minidiff eval`` as a dict (see the module docstring)."""
    from minidiff.data import load_mnist, to_unit_range  # noqa: PLC0415
    from minidiff.evaluate.classifier import (classify, file_checksum,  # noqa: PLC0415
                                              load_classifier)
    from minidiff.evaluate.classifier import classifier_path as find_classifier  # noqa: PLC0415
    from minidiff.evaluate.fid import frechet_distance, gaussian_stats  # noqa: PLC0415
    from minidiff.evaluate.likelihood import test_bits_per_dim  # noqa: PLC0415

    check_int("--n", args.n, low=2)
    from minidiff.train.checkpoint import eps_model_from_checkpoint, load_checkpoint  # noqa
    arrays = load_checkpoint(args.checkpoint)
    model, schedule, config = eps_model_from_checkpoint(args.checkpoint,
                                                        use_ema=not args.raw_weights,
                                                        arrays=arrays)
    check_int("--steps", args.steps, low=0, high=schedule.num_timesteps)
    from minidiff.spaces import space_from_checkpoint  # noqa: PLC0415
    space = space_from_checkpoint(arrays)
    classifier_path = find_classifier(args.classifier)
    classifier = load_classifier(classifier_path, name="--classifier")
    checksum = file_checksum(classifier_path)
    result = {"checkpoint": args.checkpoint, "step": arrays["step"] or None,
              "backend": backend.get_backend(),
              "classifier": classifier_path, "classifier_sha256_16": checksum,
              "sampler": args.sampler, "steps": args.steps or schedule.num_timesteps,
              "eta": args.eta if args.sampler == "ddim" else None, "n": args.n,
              "seed": args.seed}

    # test-set statistics (cached, keyed by the classifier checksum)
    mu_test, cov_test, hit, n_ref = reference_statistics(classifier, checksum, args.stats_dir,
                                                         args.reference_images)
    result["fid_reference"] = {"split": "test", "n": int(n_ref), "cached": hit}

    # samples
    backend.manual_seed(args.seed)
    start = time.time()
    variance = config.get("variance", "fixed_small")     # as trained (lesson 13)
    result["variance"] = variance
    samples = sample_images(model, schedule, args.n, args.sampler, args.steps, args.eta,
                            args.batch, quiet, space, variance=variance)
    result["space"] = space.describe()
    result["sampling_seconds"] = round(time.time() - start, 2)
    feats, probs = classify(classifier, samples)
    mu_s, cov_s = gaussian_stats(feats)
    result["fid"] = frechet_distance(mu_s, cov_s, mu_test, cov_test)

    probs_host = backend.to_host(probs)
    labels = probs_host.argmax(axis=1)
    result["mean_confidence"] = float(probs_host.max(axis=1).mean())
    result["class_histogram"] = [int((labels == k).sum()) for k in range(10)]

    # floor: the FID of n training images (n capped at 60,000) against the test set
    if not args.no_floor:
        mu_tr, cov_tr, n_floor = floor_statistics(classifier, checksum, args.stats_dir, args.n)
        result["fid_floor_train_vs_test"] = frechet_distance(mu_tr, cov_tr, mu_test, cov_test)
        result["fid_floor_n"] = n_floor

    # bits/dim on the test set
    if args.bpd_images > 0 and space.kind == "pixel":
        x0 = to_unit_range(load_mnist("test")[0][:args.bpd_images])
        start = time.time()
        bpd = test_bits_per_dim(schedule, model, x0,
                                num_samples=None if args.bpd_full else args.bpd_samples,
                                batch=min(args.batch, 100), variance=variance,
                                progress=None if quiet else Progress("bits/dim", unit="images"))
        bpd["samples_per_image"] = None if args.bpd_full else args.bpd_samples
        bpd["seconds"] = round(time.time() - start, 2)
        result["bits_per_dim"] = bpd
    return result


def _report(r: dict) -> str:
    lines = [f"checkpoint   {r['checkpoint']}",
             f"sampler      {r['sampler']}, {r['steps']} steps"
             + (f", eta {r['eta']}" if r['eta'] is not None else "")
             + f", seed {r['seed']}, {r['sampling_seconds']} s"
             + (f", variance {r['variance']}" if r.get("variance") else ""),
             f"space        {r['space']}",
             f"FID          {r['fid']:.3f}  ({r['n']} samples vs {r['fid_reference']['n']} "
             f"MNIST test images; MNIST-classifier FID, comparable only within minidiff)"]
    if "fid_floor_train_vs_test" in r:
        lines.append(f"FID floor    {r['fid_floor_train_vs_test']:.3f}  ({r['fid_floor_n']} "
                     f"training images vs the test set)")
    if r["n"] < 10_000:
        lines.append(f"             note: {r['n']} < 10,000 samples, FID is biased upward")
    lines.append(f"confidence   {r['mean_confidence']:.3f} (mean max-softmax of the samples)")
    total = max(sum(r["class_histogram"]), 1)
    lines.append("classes      " + "  ".join(f"{k}:{c / total:.1%}"
                                            for k, c in enumerate(r["class_histogram"])))
    if "bits_per_dim" in r:
        b = r["bits_per_dim"]
        how = ("full bound, all T terms" if b["full"] else
               f"Monte-Carlo, {b['samples_per_image']} timestep(s) per image")
        lines.append(f"bits/dim     {b['bpd']:.4f} +- {b['stderr']:.4f}  ({b['n']} test images, "
                     f"{how}; an upper bound on the NLL)")
    return "\n".join(lines)


def _inpainting(args) -> dict:
    """``--inpainting``: ``inpainting.inpainting_accuracy`` of the command's arguments."""
    from minidiff.evaluate import inpainting  # noqa: PLC0415
    from minidiff.evaluate.classifier import load_classifier  # noqa: PLC0415
    check_int("--n", args.n or INPAINT_N, low=1, high=10_000)
    return inpainting.inpainting_accuracy(
        args.checkpoint, args.n or INPAINT_N, args.mask, args.method, args.sampler,
        args.steps or None, args.seed, args.batch, args.eta, classifier=load_classifier(
            args.classifier, name="--classifier"),
        use_ema=not args.raw_weights, progress=Progress("inpainting"))


def _prompts(args) -> dict:
    """``--prompts``: ``prompts.prompts_report`` of the command's arguments, with the
    inpainting accuracy under "inpainting" when --inpainting is given too."""
    from minidiff.evaluate import prompts  # noqa: PLC0415
    if args.inpainting:                       # checked before the long sampling
        check_int("--n", args.n or INPAINT_N, low=1, high=10_000)
    result = prompts.prompts_report(
        args.checkpoint, args.per_prompt or PER_PROMPT, args.guidance, args.sampler,
        args.steps or None, args.eta, args.seed, args.batch, use_ema=not args.raw_weights,
        classifier=args.classifier, stats_dir=args.stats_dir,
        reference_images=args.reference_images, progress=Progress)
    if args.inpainting:
        result["inpainting"] = _inpainting(args)
    return result


@command
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-classifier"]:
        from minidiff.evaluate.train_classifier import main as train_main  # noqa: PLC0415
        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    from minidiff.paths import resolve_user_path  # noqa: PLC0415
    args.checkpoint = resolve_user_path(args.checkpoint)
    check_input_file("--checkpoint", args.checkpoint)
    if args.classifier:
        check_input_file("--classifier", args.classifier)
    if os.path.exists(args.stats_dir) and not os.path.isdir(args.stats_dir):
        raise MinidiffInputError(f"--stats-dir: {args.stats_dir} is a file, expected a folder")
    from minidiff.evaluate import autoencoder  # noqa: PLC0415
    for flag, value in (("--per-prompt", args.per_prompt), ("--guidance", args.guidance)):
        if value is not None and not args.prompts:
            raise MinidiffInputError(f"{flag}: only with --prompts (the text-model figures), "
                                     "which was not given")
    if args.prompts:
        from minidiff.evaluate import prompts  # noqa: PLC0415
        result = _prompts(args)
        text = prompts.report(result)
    elif args.inpainting:
        from minidiff.evaluate import inpainting  # noqa: PLC0415
        result = _inpainting(args)
        text = inpainting.report(result)
    elif autoencoder.is_autoencoder(args.checkpoint):          # lesson 09's figures
        args.n = args.n or 10_000
        result = autoencoder.evaluate_autoencoder(args)
        text = autoencoder.report(result)
    else:
        args.n = args.n or 10_000
        result = evaluate(args)   # progress goes to stderr, so --json output stays clean
        text = _report(result)
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
