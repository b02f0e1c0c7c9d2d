"""Exact denoisers for data whose distribution is known: a Gaussian, or a mixture of isotropic
Gaussians (lesson 08, section 3, equations (8.1)-(8.3)).  Used by lesson 08 and the tests as a
network with no error, so that whatever a sampler gets wrong is the sampler's.

Data x_0 ~ sum_k w_k N(m_k, s_k^2 I) in D dimensions.  By the closed form (2.4), x_t given
component k is N(sqrt(abar_t) m_k, v_k I) with v_k = abar_t s_k^2 + 1 - abar_t, so

    q(x_t) = sum_k w_k N(x_t; sqrt(abar_t) m_k, v_k I).                                 (8.1)

The network that minimises L_simple (4.6) is the conditional mean E[eps | x_t], and
E[eps | x_t] = -sqrt(1 - abar_t) grad log q(x_t) (Tweedie's formula), which for (8.1) is

    eps*(x_t, t) = sqrt(1 - abar_t) sum_k r_k(x_t) (x_t - sqrt(abar_t) m_k) / v_k,          (8.2)
    r_k(x_t)     = w_k N(x_t; sqrt(abar_t) m_k, v_k I) / q(x_t)   (the responsibilities);

likewise the best x_0 and v predictions (2.5)-(2.6) are

    x0*(x_t, t) = E[x_0 | x_t]
                = sum_k r_k (m_k + sqrt(abar_t) s_k^2 / v_k (x_t - sqrt(abar_t) m_k)),
    v*(x_t, t)  = sqrt(abar_t) eps* - sqrt(1 - abar_t) x0*.                                (8.3)

One component (K = 1) is the Gaussian data set; its eps* is linear in x_t.  Timesteps are
0-based indices into the schedule given (index t is the paper's step t + 1); a respaced sampler
passes the original indices, so give the original schedule.
"""
from __future__ import annotations

import math

from minidiff import backend
from minidiff.diffusion._util import raw
from minidiff.diffusion.forward import PREDICTIONS

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """x_0 ~ sum_k weights[k] N(means[k], stds[k]^2 I): ``means`` (K, D), ``stds`` (K,),
    ``weights`` (K,) summing to 1 (equal weights when None)."""

    def __init__(self, means, stds, weights=None):
        xp = backend.xp()
        self.means = xp.asarray(backend.to_device(backend.host.asarray(means, dtype="float64")))
        if self.means.ndim != 2:
            raise ValueError(f"means: expected shape (K, D), got {tuple(self.means.shape)}")
        k = self.means.shape[0]
        self.stds = xp.asarray(backend.to_device(
            backend.host.asarray(stds, dtype="float64").reshape(-1)))
        w = backend.host.full(k, 1.0 / k) if weights is None else \
            backend.host.asarray(weights, dtype="float64").reshape(-1)
        if self.stds.shape != (k,) or w.shape != (k,):
            raise ValueError(f"stds, weights: expected {k} values each (one per component), "
                             f"got {tuple(self.stds.shape)} and {tuple(w.shape)}")
        if (w <= 0).any() or abs(float(w.sum()) - 1.0) > 1e-9:
            raise ValueError(f"weights: expected positive values summing to 1, got {w.tolist()}")
        self.weights = xp.asarray(backend.to_device(w))

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def mean(self):
        """E[x_0] = sum_k w_k m_k, shape (D,)."""
        return self.weights @ self.means

    def variance(self):
        """Var[x_0] per coordinate: sum_k w_k (s_k^2 + m_k^2) - E[x_0]^2, shape (D,)."""
        second = self.weights @ (self.stds[:, None] ** 2 + self.means ** 2)
        return second - self.mean() ** 2

    def sample(self, n: int):
        """``(x_0, labels)``: n draws (n, D) in float64 and the component of each."""
        xp = backend.xp()
        cdf = xp.cumsum(self.weights)
        u = backend.rand(n, dtype="float64")
        labels = xp.minimum(xp.searchsorted(cdf, u), len(cdf) - 1)
        noise = backend.randn(n, self.dim, dtype="float64")
        return self.means[labels] + self.stds[labels][:, None] * noise, labels

    # ------------------------------------------------------------------ (8.1)-(8.3)
    def _posterior(self, schedule, x_t, t):
        """(x, a, v, r) for x_t flattened to (N, D): abar (N, 1), v_k (N, K), r_k (N, K)."""
        xp = backend.xp()
        x = raw(x_t)
        x = x.reshape(x.shape[0], -1).astype(xp.float64)
        a = backend.to_device(schedule.alphas_cumprod)[xp.asarray(raw(t)).reshape(-1)][:, None]
        v = a * self.stds[None, :] ** 2 + 1.0 - a                                # (N, K)
        # ||x - sqrt(a) m_k||^2 for every item and component, (N, K)
        centred_sq = ((x ** 2).sum(1)[:, None] - 2.0 * xp.sqrt(a) * (x @ self.means.T)
                      + a * (self.means ** 2).sum(1)[None, :])
        log_r = (xp.log(self.weights)[None, :] - 0.5 * centred_sq / v
                 - 0.5 * self.dim * xp.log(2.0 * math.pi * v))
        log_r = log_r - log_r.max(axis=1, keepdims=True)
        r = xp.exp(log_r)
        return x, a, v, r / r.sum(axis=1, keepdims=True)

    def eps(self, schedule, x_t, t):
        """eps*(x_t, t) of (8.2), same shape and dtype as x_t."""
        xp = backend.xp()
        x, a, v, r = self._posterior(schedule, x_t, t)
        rv = r / v
        out = xp.sqrt(1.0 - a) * (x * rv.sum(1, keepdims=True) - xp.sqrt(a) * (rv @ self.means))
        return out.reshape(raw(x_t).shape).astype(raw(x_t).dtype)

    def x0(self, schedule, x_t, t):
        """x0*(x_t, t) = E[x_0 | x_t] of (8.3), same shape and dtype as x_t."""
        xp = backend.xp()
        x, a, v, r = self._posterior(schedule, x_t, t)
        gain = r * xp.sqrt(a) * self.stds[None, :] ** 2 / v                     # (N, K)
        out = (r @ self.means) + gain.sum(1, keepdims=True) * x - xp.sqrt(a) * (gain @ self.means)
        return out.reshape(raw(x_t).shape).astype(raw(x_t).dtype)

    def v(self, schedule, x_t, t):
        """v*(x_t, t) = sqrt(abar_t) eps* - sqrt(1 - abar_t) x0* of (8.3)."""
        xp = backend.xp()
        a = backend.to_device(schedule.alphas_cumprod)[xp.asarray(raw(t)).reshape(-1)]
        a = a.reshape((-1,) + (1,) * (raw(x_t).ndim - 1))
        out = xp.sqrt(a) * self.eps(schedule, x_t, t) - xp.sqrt(1.0 - a) * self.x0(schedule, x_t, t)
        return out.astype(raw(x_t).dtype)

    def model(self, schedule, prediction: str = "eps"):
        """A network ``model(x_t, t)`` that predicts ``prediction`` ("eps", "x0" or "v")
        exactly; wrap it with ``as_eps_model`` for the samplers when it is not eps."""
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction: expected one of ('eps', 'x0', 'v'), got {prediction!r}")
        predict = getattr(self, prediction)
        return lambda x_t, t: predict(schedule, x_t, t)

