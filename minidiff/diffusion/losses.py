"""Training losses and the pieces of the variational bound (lesson 04).

**L_simple** (4.6).  With the eps-parameterization (3.7) the KL term L_{t-1} (4.4) becomes a
weighted noise regression (4.5),

    L_{t-1} = E[ beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) ||eps - eps_theta(x_t, t)||^2 ] + C,

and Ho et al. drop the weight: L_simple = E_{t, x_0, eps} ||eps - eps_theta(x_t, t)||^2.  Here it
is the mean over items of the per-item mean squared error.  The network may instead predict x_0
or v (2.6) with the same MSE form.  **Min-SNR-gamma** weighting (Hang et al. 2023, (4.9))
multiplies item i's error by

    eps target: min(snr_t, gamma) / snr_t,   x_0 target: min(snr_t, gamma),
    v target:   min(snr_t, gamma) / (snr_t + 1),

which is the same weight, min(snr_t, gamma), on the implied x_0 error in every case.

**KL of two Gaussians** (4.3), per dimension, in nats:

    KL(N(m1, e^{l1}) || N(m2, e^{l2})) = 0.5 (-1 + l2 - l1 + e^{l1 - l2} + (m1 - m2)^2 e^{-l2}).

**Discretized decoder** L_0 (4.7).  Data lives on 256 levels in [-1, 1], spaced 2/255.  The
probability of level x is the Gaussian mass of its bin [x - 1/255, x + 1/255], with the edge bins
opened to -inf (x = -1) and +inf (x = 1), so the 256 probabilities sum to one exactly.  The
normal CDF Phi(z) = erfc(-z / sqrt 2) / 2 uses the Chebyshev-fitted erfc of Numerical Recipes
(``erfcc``): its *relative* error is below 1.2e-7 for every real argument, so even far-tail
bin masses (and their logs, to ~1.2e-7 absolute) are accurate.  Upper-tail masses are computed
as Phi(-z) rather than 1 - Phi(z) to avoid cancellation.
"""
from __future__ import annotations

from minidiff.diffusion._util import exp, extract, mean_over_items, raw, xp_of
from minidiff.tensor import Tensor

__all__ = ["loss_simple", "min_snr_weight", "normal_kl", "erfc", "normal_cdf",
           "discretized_gaussian_log_likelihood", "TARGETS"]

TARGETS = ("eps", "x0", "v")

_ERFC_COEFFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
                0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def erfc(x):
    """Complementary error function, Numerical Recipes ``erfcc``; relative error < 1.2e-7:

        erfc(|x|) = u exp(-x^2 + P(u)),  u = 1 / (1 + |x|/2),  P a degree-9 polynomial,
        erfc(x) = 2 - erfc(-x) for x < 0.
    """
    xp = xp_of(x)
    z = xp.abs(x)
    u = 1.0 / (1.0 + 0.5 * z)
    poly = xp.zeros_like(u)
    for c in reversed(_ERFC_COEFFS):
        poly = poly * u + c
    ans = u * xp.exp(-z * z + poly)
    return xp.where(x >= 0, ans, 2.0 - ans)


def normal_cdf(x):
    """Phi(x) = erfc(-x / sqrt 2) / 2 (relative error < 1.2e-7 in both tails' small side)."""
    return 0.5 * erfc(-x * 0.7071067811865476)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats, equation (4.3).

    Arguments broadcast; any of them may be a Tensor (the result is then a Tensor)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + exp(logvar1 - logvar2)
                  + (mean1 - mean2) * (mean1 - mean2) * exp(-1.0 * logvar2))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) of 8-bit data x in [-1, 1] under N(means, exp(log_scales)^2) integrated over
    x's bin of width 2/255, edge bins open to -+inf, equation (4.7).  Elementwise, in nats."""
    x, means, log_scales = raw(x), raw(means), raw(log_scales)
    xp = xp_of(x)
    centered = x - means
    inv_stdv = xp.exp(-log_scales)
    upper = inv_stdv * (centered + 1.0 / 255.0)
    lower = inv_stdv * (centered - 1.0 / 255.0)
    cdf_upper = normal_cdf(upper)           # P(X < x + 1/255)
    sf_lower = normal_cdf(-lower)           # P(X > x - 1/255), no cancellation
    # mass of the bin, computed on the side of the mean where both tails are small
    mass = xp.where(lower > 0, normal_cdf(-lower) - normal_cdf(-upper),
                    cdf_upper - normal_cdf(lower))
    tiny = xp.finfo(mass.dtype).tiny   # 1e-300 would round to 0 in float32: log(0) = -inf
    log_probs = xp.where(
        x < -0.999, xp.log(xp.maximum(cdf_upper, tiny)),
        xp.where(x > 0.999, xp.log(xp.maximum(sf_lower, tiny)),
                 xp.log(xp.maximum(mass, tiny))))
    return log_probs


def min_snr_weight(schedule, t, target: str = "eps", gamma: float = 5.0, like=None):
    """Per-item Min-SNR-gamma weight (4.9) for ``target`` in ("eps", "x0", "v"), shape (N,)."""
    snr = extract(schedule.snr, t, like).reshape(-1)
    clipped = xp_of(snr).minimum(snr, gamma)
    if target == "eps":
        return clipped / snr
    if target == "x0":
        return clipped
    if target == "v":
        return clipped / (snr + 1.0)
    raise ValueError(f"target: expected one of {TARGETS}, got {target!r}")


def loss_simple(prediction, target, t=None, schedule=None, target_type: str = "eps",
                min_snr_gamma: float | None = None):
    """L_simple (4.6): mean over items of the per-item MSE between ``prediction`` and
    ``target`` (the true eps, x_0 or v per ``target_type``), optionally Min-SNR weighted (4.9).

    ``prediction`` may be a Tensor; the result is then a differentiable scalar Tensor.
    ``t`` and ``schedule`` are needed only with ``min_snr_gamma``.
    """
    if target_type not in TARGETS:
        raise ValueError(f"target_type: expected one of {TARGETS}, got {target_type!r}")
    if raw(prediction).shape != raw(target).shape:
        raise ValueError(f"target: expected the prediction's shape {raw(prediction).shape}, "
                         f"got {raw(target).shape}")
    if not isinstance(prediction, Tensor):
        prediction = Tensor(prediction)
    target = raw(target)
    if target.dtype.kind == "f" and target.dtype != prediction.dtype:
        target = target.astype(prediction.dtype)  # a float32 model keeps a float32 loss
    diff = prediction - target
    per_item = mean_over_items(diff * diff)
    if min_snr_gamma is not None:
        if schedule is None or t is None:
            raise ValueError("min_snr_gamma: expected t and schedule to be given too, got "
                             f"t={t!r}, schedule={schedule!r}")
        per_item = per_item * min_snr_weight(schedule, t, target_type, min_snr_gamma,
                                             like=raw(prediction))
    return per_item.mean()
