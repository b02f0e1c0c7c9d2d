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

which by (4.11) is the same weight, min(snr_t, gamma), on the implied x_0 error in every case.

**KL of two Gaussians** (4.3), per dimension, in nats:

    KL(N(m1, e^{l1}) || N(m2, e^{l2})) = 0.5 (-1 + l2 - l1 + e^{l1 - l2} + (m1 - m2)^2 e^{-l2}).

**Discretized decoder** L_0 (4.7).  Data lives on 256 levels in [-1, 1], spaced 2/255.  The
probability of level x is the Gaussian mass of its bin [x - 1/255, x + 1/255], with the edge bins
opened to -inf (x = -1) and +inf (x = 1), so the 256 probabilities sum to one exactly.  The
normal CDF Phi(z) = erfc(-z / sqrt 2) / 2 (``minidiff.ops.normal_cdf``, differentiable, so the
decoder is a training loss too) uses the Chebyshev-fitted erfc of Numerical Recipes
(``erfcc``): its *relative* error is below 1.2e-7 for every real argument, so even far-tail
bin masses (and their logs, to ~1.2e-7 absolute) are accurate.  Upper-tail masses are computed
as Phi(-z) rather than 1 - Phi(z) to avoid cancellation.
"""
from __future__ import annotations

from minidiff import ops
from minidiff.diffusion._util import exp, extract, mean_over_items, raw, xp_of
from minidiff.diffusion.forward import PREDICTIONS
from minidiff.ops.special import erfc_array
from minidiff.tensor import Tensor

__all__ = ["loss_simple", "min_snr_weight", "normal_kl", "erfc", "normal_cdf",
           "discretized_gaussian_log_likelihood", "TARGETS"]

#: what a network may predict (lesson 02): the vocabulary of ``forward.PREDICTIONS``
TARGETS = PREDICTIONS

def erfc(x):
    """Complementary error function of an array, Numerical Recipes ``erfcc``; relative error
    < 1.2e-7 (the one copy lives beside the differentiable Phi, ``minidiff.ops.special``)."""
    return erfc_array(x)


def normal_cdf(x):
    """Phi(x) = erfc(-x / sqrt 2) / 2 of an array (relative error < 1.2e-7 in both tails'
    small side); ``minidiff.ops.normal_cdf`` is the same function on Tensors."""
    return 0.5 * erfc(-x * 0.7071067811865476)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats, equation (4.3).

    Arguments broadcast; any of them may be a Tensor (the result is then a Tensor)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + exp(logvar1 - logvar2)
                  + (mean1 - mean2) * (mean1 - mean2) * exp(-1.0 * logvar2))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) of 8-bit data x in [-1, 1] under N(means, exp(log_scales)^2) integrated over
    x's bin of width 2/255, edge bins open to -+inf, equation (4.7).  Elementwise, in nats.

    Differentiable in ``means`` and ``log_scales`` when either is a Tensor (the result is
    then a Tensor: the training loss of the bound); with arrays it returns an array."""
    as_tensor = isinstance(means, Tensor) or isinstance(log_scales, Tensor)
    x = raw(x)
    xp = xp_of(x)
    means = means if isinstance(means, Tensor) else Tensor(means)
    log_scales = log_scales if isinstance(log_scales, Tensor) else Tensor(log_scales)
    centered = x - means
    inv_stdv = (-1.0 * log_scales).exp()
    upper = inv_stdv * (centered + 1.0 / 255.0)
    lower = inv_stdv * (centered - 1.0 / 255.0)
    cdf_upper = ops.normal_cdf(upper)            # P(X < x + 1/255)
    sf_lower = ops.normal_cdf(-1.0 * lower)      # P(X > x - 1/255), no cancellation
    # mass of the bin, computed on the side of the mean where both tails are small
    mass = ops.where(lower.data > 0, sf_lower - ops.normal_cdf(-1.0 * upper),
                     cdf_upper - ops.normal_cdf(lower))
    tiny = float(xp.finfo(mass.dtype).tiny)   # 1e-300 would round to 0 in float32: log(0)
    log_probs = ops.where(
        x < -0.999, cdf_upper.clip(tiny, None).log(),
        ops.where(x > 0.999, sf_lower.clip(tiny, None).log(), mass.clip(tiny, None).log()))
    return log_probs if as_tensor else log_probs.data


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
                min_snr_gamma: float | None = None, reduce: bool = True):
    """L_simple (4.6): mean over items of the per-item MSE between ``prediction`` and
    ``target`` (the true eps, x_0 or v per ``target_type``), optionally Min-SNR weighted (4.9).

    ``prediction`` may be a Tensor; the result is then a differentiable scalar Tensor.
    ``t`` and ``schedule`` are needed only with ``min_snr_gamma``.  ``reduce=False``: the
    per-item losses (N,) instead of their mean.
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
    return per_item.mean() if reduce else per_item
