"""Every figure of ``minidiff eval`` for an unconditioned diffusion checkpoint, as a dict
(``evaluate``; the command and its options: ``minidiff.commands.eval``).

FID (``fid.py``) of ``n`` samples against the MNIST test set on the features of minidiff's own
classifier (``classifier.py``), with the train-vs-test floor at the same n; the classifier's
confidence and class histogram; bits/dim of test images (``likelihood.py``) for a pixel model.
"""
from __future__ import annotations

import time

from minidiff import backend
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.errors import MinidiffInputError, check_int
from minidiff.evaluate.classifier import (classifier_path as find_classifier, classify,
                                          file_checksum, load_classifier)
from minidiff.evaluate.fid import (DEFAULT_STATS_DIR, floor_statistics, frechet_distance,
                                   gaussian_stats, reference_statistics)
from minidiff.evaluate.likelihood import test_bits_per_dim
from minidiff.pipelines.load import Pipeline, load_pipeline, model_sampler
from minidiff.pipelines.sample import sample_images
from minidiff.progress import Progress

__all__ = ["evaluate", "report", "CONFIDENT"]

#: a sample the classifier labels with more than this probability counts as readable
CONFIDENT = 0.9
#: default Monte-Carlo bits/dim: images x timesteps per image (their cost: docs/commands.md)
BPD_IMAGES, BPD_SAMPLES = 256, 4
#: test digits --inpainting completes unless --n says otherwise
INPAINT_N = 100
#: samples per prompt of --prompts unless --per-prompt says otherwise (1,000 samples in all)
PER_PROMPT = 20


def evaluate(checkpoint, n: int = 10_000, sampler: str | None = None, steps: int | None = None,
             eta: float = 0.0, batch: int = 250, seed: int = 0, raw_weights: bool = False,
             classifier=None, stats_dir: str = DEFAULT_STATS_DIR,
             reference_images: int = 10_000, floor: bool = True,
             bpd_images: int = BPD_IMAGES, bpd_samples: int = BPD_SAMPLES,
             bpd_full: bool = False, quiet: bool = False) -> dict:
    """Every figure of ``minidiff eval`` for the unconditioned diffusion model in
    ``checkpoint`` (a path, or a ``Pipeline`` already loaded) (module docstring): FID of
    ``n`` samples (``sampler`` with ``steps``, 0 = T, each None: the model's own,
    ``pipelines.load.model_sampler``; ``eta``; ``batch`` at a time; ``seed``) against the
    first ``reference_images`` MNIST test images on ``classifier``'s features (None: the
    shipped one), statistics cached in ``stats_dir``; the train-vs-test floor at n if
    ``floor``; the confidence and class histogram; for a pixel model the bits/dim of
    ``bpd_images`` test images (``bpd_samples`` timesteps each, or the full bound with
    ``bpd_full``).  ``raw_weights``: the last trained
    weights instead of their EMA (for a path); ``quiet``: no progress on stderr."""
    check_int("--n", n, low=2)
    pipeline = checkpoint if isinstance(checkpoint, Pipeline) else \
        load_pipeline(checkpoint, use_ema=not raw_weights)
    checkpoint = pipeline.path
    if pipeline.kind != "none":
        raise MinidiffInputError(
            f"--checkpoint: {checkpoint} is conditioned on {pipeline.kind!r}; its figures "
            "come from --prompts (a text model) or --inpainting (a concat model)")
    model, schedule, config, space = (pipeline.eps(), pipeline.schedule, pipeline.config,
                                      pipeline.space)
    if bpd_full and space.kind != "pixel":
        raise MinidiffInputError(f"--bpd-full: {checkpoint} is a {space.kind} diffusion model; "
                                 "bits/dim are a bound on pixels, which it does not model (its "
                                 "figures are FID and confidence)")
    sampler, steps = model_sampler(config, sampler, steps)
    classifier_path = find_classifier(classifier)
    classifier = load_classifier(classifier_path, name="--classifier")
    checksum = file_checksum(classifier_path)
    result = {"checkpoint": str(checkpoint), "step": pipeline.step or None,
              "backend": backend.get_backend(),
              "classifier": classifier_path, "classifier_sha256_16": checksum,
              "sampler": sampler, "steps": steps,
              "eta": eta if sampler == "ddim" else None, "n": n,
              "seed": seed}

    # test-set statistics (cached, keyed by the classifier checksum)
    mu_test, cov_test, hit, n_ref = reference_statistics(classifier, checksum, stats_dir,
                                                         reference_images)
    result["fid_reference"] = {"split": "test", "n": int(n_ref), "cached": hit}

    # samples
    start = time.time()
    variance = config["variance"]                         # as trained (lesson 13)
    result["variance"] = variance
    samples, _ = sample_images(model, schedule, space, n, sampler, steps, eta, seed, batch,
                               variance,
                               progress=None if quiet else
                               Progress(f"sampling {n} images ({sampler})"))
    result["space"] = space.describe()
    result["sampling_seconds"] = round(time.time() - start, 2)
    feats, probs = classify(classifier, samples)
    mu_s, cov_s = gaussian_stats(feats)
    result["fid"] = frechet_distance(mu_s, cov_s, mu_test, cov_test)

    probs_host = backend.to_host(probs)
    labels = probs_host.argmax(axis=1)
    result["mean_confidence"] = float(probs_host.max(axis=1).mean())
    result["confident_fraction"] = float((probs_host.max(axis=1) > CONFIDENT).mean())
    result["class_histogram"] = [int((labels == k).sum()) for k in range(10)]

    # floor: the FID of n training images (n capped at 60,000) against the test set
    if floor:
        mu_tr, cov_tr, n_floor = floor_statistics(classifier, checksum, stats_dir, n)
        result["fid_floor_train_vs_test"] = frechet_distance(mu_tr, cov_tr, mu_test, cov_test)
        result["fid_floor_n"] = n_floor

    # bits/dim on the test set
    if bpd_images > 0 and space.kind == "pixel":
        x0 = to_unit_range(load_mnist("test")[0][:bpd_images])
        start = time.time()
        bpd = test_bits_per_dim(schedule, model, x0,
                                num_samples=None if bpd_full else bpd_samples,
                                batch=min(batch, 100), variance=variance,
                                progress=None if quiet else Progress("bits/dim", unit="images"))
        bpd["samples_per_image"] = None if bpd_full else bpd_samples
        bpd["seconds"] = round(time.time() - start, 2)
        result["bits_per_dim"] = bpd
    return result


def report(r: dict) -> str:
    """The human-readable lines of ``minidiff eval`` for a diffusion model."""
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
    lines.append(f"confidence   {r['mean_confidence']:.3f} (mean max-softmax of the samples); "
                 f"{r['confident_fraction']:.1%} labelled with confidence > {CONFIDENT}")
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
