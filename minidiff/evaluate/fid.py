"""Fréchet distance between Gaussians fitted to classifier features (minidiff's MNIST FID).

**What this is, and what it is not.**  The features are the 128-d penultimate activations of
minidiff's own MNIST classifier (``classifier.py``), not Inception-v3's 2048-d pool features.
So this is an *MNIST-specific FID*: its numbers are comparable only with other numbers from
minidiff computed with the same classifier file (the cached statistics are keyed by its
checksum), never with Inception FIDs from papers.

**Bias.**  FID is biased upward at small sample counts (the covariance of N samples is noisy,
and the noise adds to the distance), so every FID is reported with its sample count, the
default is 10,000 samples, and the FID between the training set and the test set (at the same
count) is reported as the *floor* a perfect generator would reach.

**The formula.**  For Gaussians N(mu1, S1) and N(mu2, S2),

    FID = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr( (S1 S2)^{1/2} ).

S1 S2 is not symmetric, so instead of a general matrix square root (scipy.linalg.sqrtm) we use
symmetric eigendecompositions only (``xp.linalg.eigh``, available in NumPy and CuPy):

    A = S1^{1/2}           from S1 = V diag(l) V^T  ->  A = V diag(sqrt(l)) V^T (l clipped >= 0)
    M = A S2 A             symmetric positive semi-definite
    Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M))

because S1 S2 = A (A S2 A) A^{-1} is similar to M, so it has M's (non-negative) eigenvalues,
and the square root's eigenvalues are their square roots.  (When S1 is singular the identity
still holds by continuity.)  Everything runs in float64.
"""
from __future__ import annotations

import os

from minidiff import backend
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.evaluate.classifier import classify
from minidiff.tensor import Tensor

#: where the reference (test set) and floor statistics are cached
DEFAULT_STATS_DIR = os.path.join("runs", "fid_stats")


def gaussian_stats(features):
    """(mean (D,), covariance (D, D)) of ``features`` (N, D) in float64, on the active backend.
    The covariance uses the unbiased 1/(N-1) normalisation, as the reference FID code does."""
    xp = backend.xp()
    f = backend.to_device(features.data if isinstance(features, Tensor) else features).astype(xp.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_stats: expected features (N >= 2, D), got {f.shape}")
    mu = f.mean(axis=0)
    centred = f - mu
    cov = centred.T @ centred / (f.shape[0] - 1)
    return mu, cov


def _sym_sqrt(xp, s):
    values, vectors = xp.linalg.eigh((s + s.T) / 2)
    return (vectors * xp.sqrt(xp.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(s1, s2) -> float:
    """Tr((S1 S2)^{1/2}) for symmetric PSD S1, S2 via eigh (see the module docstring)."""
    xp = backend.array_module_of(s1)
    a = _sym_sqrt(xp, s1)
    m = a @ s2 @ a
    values = xp.linalg.eigvalsh((m + m.T) / 2)
    return float(xp.sqrt(xp.clip(values, 0.0, None)).sum())


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}), clipped at 0 (round-off)."""
    xp = backend.xp()
    mu1, cov1, mu2, cov2 = (backend.to_device(a).astype(xp.float64)
                            for a in (mu1, cov1, mu2, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise ValueError(f"frechet_distance: shapes differ: {mu1.shape}/{cov1.shape} vs "
                         f"{mu2.shape}/{cov2.shape}")
    diff = mu1 - mu2
    value = (float(diff @ diff) + float(xp.trace(cov1)) + float(xp.trace(cov2))
             - 2.0 * trace_sqrt_product(cov1, cov2))
    return max(value, 0.0)


def fid_from_features(features1, features2) -> float:
    """FID between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


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
    feats, _ = classify(classifier, to_unit_range(images_uint8))
    return feats


def reference_statistics(classifier, checksum: str, stats_dir: str = DEFAULT_STATS_DIR,
                         reference_images: int = 10_000):
    """``(mu, cov, cached, n)``: the Gaussian of the classifier's features of the first
    ``reference_images`` MNIST test images (all 10,000 by default), cached in ``stats_dir``
    under the classifier's ``checksum`` (``fid.py``)."""
    test_images, _ = load_mnist("test")
    n_ref = min(max(reference_images, 2), len(test_images))
    key = f"test_{checksum}" + ("" if n_ref == len(test_images) else f"_first{n_ref}")
    mu, cov, hit = _cached_stats(
        key, stats_dir, lambda: gaussian_stats(_features_of(classifier, test_images[:n_ref])))
    return mu, cov, hit, n_ref


def floor_statistics(classifier, checksum: str, stats_dir: str, n: int):
    """``(mu, cov, n)`` of the classifier's features of ``n`` random training images (at most
    60,000; seed 0): the FID floor's side, cached in ``stats_dir`` under the ``checksum``."""
    n_floor = min(n, 60_000)

    def floor_stats():
        train_images, _ = load_mnist("train")
        pick = backend.host.random.default_rng(0).permutation(len(train_images))[:n_floor]
        return gaussian_stats(_features_of(classifier, train_images[pick]))
    mu, cov, _ = _cached_stats(f"train_{checksum}_n{n_floor}", stats_dir, floor_stats)
    return mu, cov, n_floor
