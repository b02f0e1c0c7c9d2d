"""The diagonal Gaussian q(z|x) = N(mu, diag(sigma^2)) an encoder outputs (lesson 09).

The encoder predicts, for every latent element, a mean mu and a log-variance log sigma^2
(a log, so any real number is a valid output; clamped to [-30, 20] as CompVis does, so that
exp() neither underflows to a zero std nor overflows).  Then:

    sample:  z = mu + sigma * eps,  eps ~ N(0, I)          the reparameterization (9.1):
             z is a differentiable function of (mu, sigma); the randomness sits in eps
    mode:    z = mu
    kl:      KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2)     (9.3)
             per element, summed over all non-batch axes (nats per image)
    nll:     -log N(x; mu, sigma^2) = 1/2 (log 2 pi + log sigma^2 + (x - mu)^2 / sigma^2)
             per element, summed likewise                                          (9.4)

(9.3) is derived step by step, and checked against a Monte-Carlo estimate, in
lessons/09_autoencoder.py.
"""
from __future__ import annotations

import math

from minidiff import backend
from minidiff.ops import clip, exp
from minidiff.tensor import Tensor, as_tensor

__all__ = ["DiagonalGaussian", "LOGVAR_RANGE"]

#: where the log-variance is clamped (CompVis' DiagonalGaussianDistribution)
LOGVAR_RANGE = (-30.0, 20.0)


def _sum_per_sample(t: Tensor) -> Tensor:
    """Sum over every axis but the first: one number per batch item."""
    return t.sum(axis=tuple(range(1, t.ndim))) if t.ndim > 1 else t


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) with one independent Gaussian per element of ``mean``.

    ``mean`` and ``logvar``: Tensors (or arrays) of one shape (N, ...)."""

    def __init__(self, mean, logvar):
        mean, logvar = as_tensor(mean), as_tensor(logvar)
        if mean.shape != logvar.shape:
            raise ValueError(f"DiagonalGaussian: mean {mean.shape} and logvar {logvar.shape} "
                             "must have the same shape")
        self.mean = mean
        self.logvar = clip(logvar, *LOGVAR_RANGE)
        self.std = exp(0.5 * self.logvar)
        self.var = exp(self.logvar)

    @property
    def shape(self) -> tuple:
        return self.mean.shape

    def sample(self, noise=None) -> Tensor:
        """z = mean + std * eps (9.1); eps from minidiff's generator unless given."""
        if noise is None:
            noise = backend.randn(*self.mean.shape, dtype=self.mean.dtype)
        return self.mean + self.std * as_tensor(noise)

    def mode(self) -> Tensor:
        """The most likely z: the mean."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample (9.3): 1/2 sum (mu^2 + sigma^2 - 1 - log sigma^2)."""
        return 0.5 * _sum_per_sample(self.mean * self.mean + self.var - 1.0 - self.logvar)

    def nll(self, x) -> Tensor:
        """-log q(x) per sample (9.4): 1/2 sum (log 2 pi + log sigma^2 + (x - mu)^2 / sigma^2)."""
        diff = as_tensor(x) - self.mean
        return 0.5 * _sum_per_sample(math.log(2.0 * math.pi) + self.logvar
                                     + diff * diff / self.var)
