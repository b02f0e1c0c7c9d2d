"""Negative log-likelihood of MNIST test images in bits/dim from the variational bound (4.2).

A thin batching wrapper around ``minidiff.diffusion.bits_per_dim``: the full bound (all T
terms per image, ``num_samples=None``) or an unbiased Monte-Carlo estimate with
``num_samples`` random timesteps per image.  The reported standard error is that of the mean
over images (with Monte-Carlo it includes the variance from the drawn timesteps).  The bound
is an *upper* bound on the NLL, computed on the discretized data ([0, 255] -> [-1, 1]).
"""
from __future__ import annotations

import math

from minidiff import backend
from minidiff.diffusion import bits_per_dim, vlb_terms
from minidiff.tensor import Tensor


def test_bits_per_dim(schedule, eps_model, x0, num_samples: int | None = 1, batch: int = 100,
                      progress=None, variance: str = "fixed_small") -> dict:
    """bits/dim of images ``x0`` (N, C, H, W) in [-1, 1], in batches of ``batch``.

    Returns {"bpd", "stderr", "n", "full"}; ``num_samples=None`` for the full bound;
    ``variance``: the reverse variance (the model's: "learned" needs its 2C outputs)."""
    x0 = backend.to_device(x0.data if isinstance(x0, Tensor) else x0)
    per_item = []
    for start in range(0, len(x0), batch):
        result = bits_per_dim(schedule, eps_model, x0[start:start + batch],
                              num_samples=num_samples, variance=variance)
        per_item.append(backend.to_host(result["per_item"]).astype("float64"))
        if progress is not None:
            progress(min(start + batch, len(x0)), len(x0))
    values = backend.host.concatenate(per_item)
    n = len(values)
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"bpd": float(values.mean()), "stderr": stderr, "n": n,
            "full": num_samples is None}


def bound_split(schedule, eps_model, x0, batch: int = 16, progress=None,
                variance: str = "fixed_small") -> dict:
    """The full bound (all T terms) of images ``x0`` split as the DDPM paper's Table 4:
    prior L_T, distortion L_0 (the decoder) and rate sum_{t>=1} L_t, in bits per dim.

    ``batch`` images at a time go through ``vlb_terms`` (which chunks their (image, t) pairs);
    ``progress(done, total)`` counts (image, t) pairs.  Returns host float64 arrays
    ``prior``, ``distortion``, ``rate``, ``total`` (N,) (total = the other three summed) and
    ``terms`` (N, T) (column t: L_t in bits per dim, column 0: L_0), plus ``bpd`` and
    ``stderr``, the mean of ``total`` and its standard error over the images."""
    host = backend.host
    x0 = backend.to_device(x0.data if isinstance(x0, Tensor) else x0)
    n, T = len(x0), schedule.num_timesteps
    priors, terms = [], []
    for start in range(0, n, batch):
        hook = None if progress is None else (
            lambda done, _, s=start: progress(s * T + done, n * T))
        out = vlb_terms(schedule, eps_model, x0[start:start + batch], variance=variance,
                        progress=hook)
        priors.append(backend.to_host(out["prior"]).astype("float64"))
        terms.append(backend.to_host(out["terms"]).astype("float64"))
    prior = host.concatenate(priors) / math.log(2.0)
    terms = host.concatenate(terms) / math.log(2.0)
    split = {"prior": prior, "distortion": terms[:, 0], "rate": terms[:, 1:].sum(axis=1),
             "terms": terms}
    split["total"] = split["prior"] + split["distortion"] + split["rate"]
    total = split["total"]
    split["bpd"] = float(total.mean())
    split["stderr"] = float(total.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return split
