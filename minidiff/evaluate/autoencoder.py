"""``minidiff eval --checkpoint ae.npz``: how good is an autoencoder (lesson 09)?

On the first ``--n`` MNIST test images x, with x_hat = D(mean of q(z|x)) clipped to [-1, 1]:

* **MSE** and **PSNR** on the [0, 1] pixel scale: MSE = mean (x_hat - x)^2 / 4 (the images
  live in [-1, 1], twice as wide), PSNR = 10 log10(1 / MSE) dB.
* **rFID**: the FID (``fid.py``, minidiff's MNIST-classifier features) of the n
  reconstructions against the 10,000 test images, beside the floor (n training images against
  the test set).  Reconstructions of the test images themselves, so this measures what the
  decoder loses (blur, broken strokes), not generalisation.
* **accuracy**: the shipped classifier's accuracy on the reconstructions and on the originals
  (a digit that changes class is a reconstruction that failed where it matters).
* **KL per latent dimension**: KL(q(z|x) || N(0, I)) (9.3) averaged over images and divided by
  the latent size: how much information each latent number carries, in nats.
* the stored **scale factor** (9.6) and the std of the scaled means.
"""
from __future__ import annotations

import math
import time

from minidiff import backend
from minidiff.checkpoint import load_checkpoint
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.errors import check_int
from minidiff.evaluate.classifier import (classifier_path as find_classifier, classify,
                                          file_checksum, load_classifier)
from minidiff.evaluate.fid import (DEFAULT_STATS_DIR, floor_statistics, frechet_distance,
                                   gaussian_stats, reference_statistics)
from minidiff.pipelines.load import load_autoencoder
from minidiff.progress import note
from minidiff.tensor import no_grad

__all__ = ["is_autoencoder", "evaluate_autoencoder", "report"]


def is_autoencoder(path) -> bool:
    """Whether the checkpoint at ``path`` holds an autoencoder (config ``model``)."""
    return load_checkpoint(path)["config"].get("model", "unet") == "autoencoder"


def reconstruct(model, x, batch: int = 250):
    """(x_hat clipped to [-1, 1], KL per image, latent means) for images ``x`` in [-1, 1]."""
    xp = backend.xp()
    outs, kls, means = [], [], []
    with no_grad():
        for start in range(0, len(x), batch):
            q = model.encode(backend.to_device(x[start:start + batch]))
            outs.append(xp.clip(model.decode(q.mode()).data, -1.0, 1.0))
            kls.append(q.kl().data)
            means.append(q.mean.data)
    return xp.concatenate(outs), xp.concatenate(kls), xp.concatenate(means)


def evaluate_autoencoder(checkpoint, n: int = 10_000, batch: int = 250,
                         raw_weights: bool = False, classifier=None,
                         stats_dir: str = DEFAULT_STATS_DIR, reference_images: int = 10_000,
                         floor: bool = True, quiet: bool = False) -> dict:
    """Every figure of the autoencoder report as a dict (see the module docstring): the first
    ``n`` test images reconstructed ``batch`` at a time, scored on ``classifier``'s features
    (None: the shipped one) against the first ``reference_images`` test images (statistics
    cached in ``stats_dir``), with the train-vs-test floor at n if ``floor``."""
    check_int("--n", n, low=2)
    arrays = load_checkpoint(checkpoint)
    model, config, scale = load_autoencoder(checkpoint, use_ema=not raw_weights, arrays=arrays)
    classifier_path = find_classifier(classifier)
    classifier = load_classifier(classifier_path, name="--classifier")
    checksum = file_checksum(classifier_path)
    test_images, test_labels = load_mnist("test")
    n = min(n, len(test_images))
    result = {"checkpoint": str(checkpoint), "model": "autoencoder",
              "step": arrays["step"] or None, "backend": backend.get_backend(),
              "classifier": classifier_path, "classifier_sha256_16": checksum, "n": n,
              "latent_shape": list(model.latent_shape), "scale_factor": scale}

    x = to_unit_range(test_images[:n])
    start = time.time()
    x_hat, kl, means = reconstruct(model, x, batch)
    result["reconstruction_seconds"] = round(time.time() - start, 2)
    if not quiet:
        note(f"reconstructed {n} test images in {result['reconstruction_seconds']} s")
    xp = backend.xp()
    mse = float(((x_hat.astype(xp.float64) - backend.to_device(x)) ** 2).mean()) / 4.0
    result["mse"] = mse
    result["psnr_db"] = 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")
    dims = math.prod(model.latent_shape)
    result["kl_per_dim"] = float(kl.astype(xp.float64).mean()) / dims
    if scale is not None:
        result["scaled_latent_mean_std"] = float((means.astype(xp.float64) * scale).std())

    # rFID against the (cached) test-set statistics, and the train-vs-test floor
    mu_test, cov_test, hit, n_ref = reference_statistics(classifier, checksum, stats_dir,
                                                         reference_images)
    result["fid_reference"] = {"split": "test", "n": int(n_ref), "cached": hit}
    feats, probs = classify(classifier, x_hat)
    result["rfid"] = frechet_distance(*gaussian_stats(feats), mu_test, cov_test)
    labels = backend.to_host(test_labels[:n])
    result["accuracy_reconstructions"] = float(
        (backend.to_host(probs.argmax(axis=1)) == labels).mean())
    _, probs_x = classify(classifier, x)
    result["accuracy_originals"] = float(
        (backend.to_host(probs_x.argmax(axis=1)) == labels).mean())
    if floor:
        mu_tr, cov_tr, _ = floor_statistics(classifier, checksum, stats_dir, n)
        result["fid_floor_train_vs_test"] = frechet_distance(mu_tr, cov_tr, mu_test, cov_test)
    return result


def report(r: dict) -> str:
    """The human-readable lines of ``minidiff eval`` for an autoencoder."""
    lines = [f"checkpoint   {r['checkpoint']} (autoencoder, latents "
             f"{'x'.join(map(str, r['latent_shape']))})",
             f"MSE          {r['mse']:.5f}  (pixels in [0, 1]; {r['n']} MNIST test images, "
             f"reconstructed from the posterior mean)",
             f"PSNR         {r['psnr_db']:.2f} dB",
             f"rFID         {r['rfid']:.3f}  ({r['n']} reconstructions vs "
             f"{r['fid_reference']['n']} test images; MNIST-classifier FID)"]
    if "fid_floor_train_vs_test" in r:
        lines.append(f"FID floor    {r['fid_floor_train_vs_test']:.3f}  ({r['n']} training "
                     f"images vs the test set)")
    if r["n"] < 10_000:
        lines.append(f"             note: {r['n']} < 10,000 images, rFID is biased upward")
    lines.append(f"accuracy     {r['accuracy_reconstructions']:.4f} on the reconstructions, "
                 f"{r['accuracy_originals']:.4f} on the originals (shipped classifier)")
    lines.append(f"KL / dim     {r['kl_per_dim']:.4f} nats (KL(q(z|x) || N(0, I)) per latent "
                 f"number)")
    if r["scale_factor"] is not None:
        lines.append(f"scale        {r['scale_factor']:.5f}  (1 / std of the training latents; "
                     f"std of the scaled test means {r['scaled_latent_mean_std']:.3f})")
    else:
        lines.append("scale        not stored (a checkpoint from the middle of a run)")
    return "\n".join(lines)
