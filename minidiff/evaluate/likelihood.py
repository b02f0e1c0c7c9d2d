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
from minidiff.diffusion import bits_per_dim
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
