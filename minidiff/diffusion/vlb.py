"""The variational bound in nats and bits per dimension (lesson 04).

As for a VAE (4.1), -log p_theta(x_0) <= E_q[-log p_theta(x_{0:T}) + log q(x_{1:T} | x_0)] = L,
and rewriting q(x_t | x_{t-1}) with Bayes' rule as q(x_{t-1} | x_t, x_0) q(x_t | x_0) /
q(x_{t-1} | x_0) makes the q(x_t | x_0) factors telescope, leaving (4.2)

    L = KL(q(x_T | x_0) || p(x_T))                                       L_T
      + sum_{t=2}^T E_q KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))   L_{t-1}
      + E_q[-log p_theta(x_0 | x_1)]                                       L_0.

L_T has no parameters (constant, ~0 for a good schedule); each L_{t-1} is a KL of Gaussians
(4.3); L_0 is the discretized decoder (4.7).  Each term is averaged over the dimensions of an
item ("nats per dim"); dividing by ln 2 gives bits per dim (4.8).

``vlb_terms`` evaluates every term at one noise draw per step.  Column t of ``terms`` is the
0-based index t, i.e. the paper's step t + 1: column 0 is L_0, column t >= 1 is L_t (the KL for
going from x_{t+1} to x_t in the paper's numbering).  The Monte-Carlo estimate draws k uniform
indices per item.  L_0 (the decoder) is orders of magnitude larger than a typical L_t, so
a uniform draw that happens to hit it multiplies it by T and the estimate swings wildly
(256 images x 1 draw: 4.90 +- 4.32 bits/dim for the shipped model).  So L_0 is always
computed exactly, and only the T - 1 KL terms are sampled (stratifying the sum into {0} and
{1, ..., T-1}):

    L ~= L_T + L_0 + ((T - 1) / k) sum_j terms[t_j],   t_j ~ Uniform{1, ..., T-1},

still unbiased for the full sum, at k + 1 network calls per item.
"""
from __future__ import annotations

import math

from minidiff import backend, ops
from minidiff.diffusion._util import mean_over_items, raw
from minidiff.diffusion.forward import q_mean_variance, q_posterior, q_sample
from minidiff.diffusion.losses import discretized_gaussian_log_likelihood, normal_kl
from minidiff.diffusion.reverse import p_mean_variance
from minidiff.tensor import Tensor, no_grad

__all__ = ["prior_term", "bound_term", "vlb_term_at", "vlb_terms", "bits_per_dim"]


def prior_term(schedule, x0):
    """L_T = KL(q(x_T | x_0) || N(0, I)) per item, nats per dim, equation (4.2)."""
    x0 = raw(x0)
    xp = backend.array_module_of(x0)
    t = xp.full((x0.shape[0],), schedule.num_timesteps - 1, dtype=xp.int64)
    mean, _, log_var = q_mean_variance(schedule, x0, t)
    return mean_over_items(normal_kl(mean, log_var, 0.0, 0.0))


def bound_term(schedule, x0, x_t, t, mean, log_variance):
    """Per-item term of the bound at 0-based index t (shape (N,)), nats per dim, for the
    reverse step N(mean, e^log_variance) at x_t: the decoder NLL -log p(x_0 | x_1) (4.7) where
    t == 0, else KL(q(x_t | x_{t+1}, x_0) || p(x_t | x_{t+1})) (4.3).

    The one copy of this math: ``mean`` / ``log_variance`` may be Tensors (the training loss
    of objective vlb or hybrid, differentiable in both; the result is then a Tensor) or arrays
    (``vlb_term_at``, evaluation)."""
    x0, x_t = raw(x0), raw(x_t)
    true_mean, _, true_log_var = q_posterior(schedule, x0, x_t, t)
    kl = mean_over_items(normal_kl(true_mean, true_log_var, mean, log_variance))
    nll = -1.0 * mean_over_items(discretized_gaussian_log_likelihood(
        x0, mean, 0.5 * log_variance))
    first = backend.array_module_of(x0).asarray(t).reshape(-1) == 0
    if isinstance(kl, Tensor) or isinstance(nll, Tensor):
        return ops.where(first, nll, kl)
    return backend.array_module_of(x0).where(first, nll, kl)


def vlb_term_at(schedule, eps_model, x0, t, noise=None, variance="fixed_small",
                clip_x0=False):
    """Per-item term at 0-based index t (shape (N,)), nats per dim: the decoder NLL
    -log p(x_0 | x_1) (4.7) where t == 0, else KL(q(x_t|x_{t+1},x_0) || p(x_t|x_{t+1})) (4.3),
    computed by ``bound_term`` (the training loss's function) without gradients."""
    x0 = raw(x0)
    xp = backend.array_module_of(x0)
    t = xp.asarray(t, dtype=xp.int64).reshape(-1)
    if noise is None:
        noise = backend.randn(*x0.shape, dtype=x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)
    with no_grad():
        eps_pred = raw(eps_model(Tensor(x_t), t))
        out = p_mean_variance(schedule, eps_pred, x_t, t, variance=variance, clip_x0=clip_x0)
        return raw(bound_term(schedule, x0, x_t, t, out["mean"], out["log_variance"]))


def vlb_terms(schedule, eps_model, x0, variance="fixed_small", clip_x0=False,
              chunk: int = 256, progress=None):
    """Every term of the bound (4.2) in nats per dim for a batch x0 (values on the 256-level
    grid in [-1, 1]).  Returns a dict: ``prior`` (N,) = L_T; ``terms`` (N, T) where column 0 is
    L_0 and column t is L_t (0-based index t = paper's step t+1); ``total`` (N,) = L_T + sum.

    The N * T (image, t) pairs are taken in t-major order (all images at t = 0, then at t = 1,
    ...) and go through the network a whole number of t at a time, about ``chunk`` pairs
    (at least N) per forward, so N = 4 images at T = 1000 cost 16 forwards of 256, not 1000
    forwards of 4; item j of a forward is image j mod N.  The noise is drawn chunk by chunk in the
    same order, so the draws (and the numbers) are those of one forward per t.
    ``progress(done, total)`` is called after each chunk (pairs done of N * T)."""
    x0 = raw(x0)
    xp = backend.array_module_of(x0)
    n, T = x0.shape[0], schedule.num_timesteps
    total, chunk = n * T, max(int(chunk) // max(n, 1), 1) * n
    columns = []
    for start in range(0, total, chunk):
        pair = xp.arange(start, min(start + chunk, total), dtype=xp.int64)
        columns.append(vlb_term_at(schedule, eps_model, x0[pair % n], pair // n,
                                   variance=variance, clip_x0=clip_x0))
        if progress is not None:
            progress(start + len(pair), total)
    terms = xp.concatenate(columns).reshape(T, n).T
    prior = prior_term(schedule, x0)
    return {"prior": prior, "terms": terms, "total": prior + terms.sum(axis=1)}


def bits_per_dim(schedule, eps_model, x0, num_samples: int | None = None,
                 variance="fixed_small", clip_x0=False):
    """The bound (4.2) in bits per dim (4.8) for the batch x0.

    ``num_samples=None``: the full bound, all T terms.  Otherwise a Monte-Carlo estimate with
    L_0 exact and ``num_samples`` uniform indices in [1, T) per item,
    L ~= L_T + L_0 + (T - 1) * mean_j L_{t_j} (see the module docstring).  Returns a dict with
    ``bpd`` (batch mean), ``stderr`` (standard error of that mean over items: with sampling it
    includes the variance due to the drawn t) and ``per_item`` (N,), all in bits per dim.
    """
    x0 = raw(x0)
    xp = backend.array_module_of(x0)
    n, T = x0.shape[0], schedule.num_timesteps
    if num_samples is None:
        per_item = vlb_terms(schedule, eps_model, x0, variance, clip_x0)["total"]
    else:
        if int(num_samples) < 1:
            raise ValueError(f"num_samples: expected None or an integer >= 1, "
                             f"got {num_samples!r}")
        decoder = vlb_term_at(schedule, eps_model, x0, xp.zeros((n,), dtype=xp.int64),
                              variance=variance, clip_x0=clip_x0)
        acc = xp.zeros((n,), dtype=xp.float64)
        for _ in range(int(num_samples) if T > 1 else 0):
            t = backend.randint(1, T, (n,))
            t = backend.to_device(t, backend.backend_name_of(x0))
            acc = acc + vlb_term_at(schedule, eps_model, x0, t, variance=variance,
                                    clip_x0=clip_x0)
        per_item = prior_term(schedule, x0) + decoder + (T - 1) * acc / int(num_samples)
    per_item = per_item / math.log(2.0)
    stderr = float(per_item.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"bpd": float(per_item.mean()), "stderr": stderr, "per_item": per_item}
