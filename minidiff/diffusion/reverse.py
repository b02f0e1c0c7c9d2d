"""The learned reverse step p_theta(x_{t-1} | x_t) from a noise prediction (lesson 03).

The reverse process is a Gaussian (3.5) p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I).
Its mean is the posterior mean (3.4) with x_0 replaced by the network's guess (2.5):

    x0_hat   = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps_theta(x_t, t)
    mu_theta = posterior_mean_coef1_t x0_hat + posterior_mean_coef2_t x_t              (3.7)
             = (1/sqrt(alpha_t)) (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)).

Going through x0_hat lets us clip it to the data range [-1, 1] first (``clip_x0=True``), as the
reference implementation does when sampling.  The variance is fixed (3.6) or learned:

* ``"fixed_small"``: sigma_t^2 = beta~_t, the posterior variance (optimal for a single data point);
* ``"fixed_large"``: sigma_t^2 = beta_t (optimal for x_0 ~ N(0, I)); at index 0 (step 1) the
  variance used is beta~ of step 2 (``posterior_variance[1]``), as improved-diffusion does, so the
  decoder L_0 has a sensible width;
* ``"learned"`` (Nichol & Dhariwal 2021, eq. 15): the network outputs 2C channels, the
  prediction in ``[:C]`` and a raw value nu in ``[C:]`` (their v; not the velocity v of
  (2.6)); with frac = (nu + 1) / 2

      log sigma_t^2 = frac log beta_t + (1 - frac) log beta~_t                       (13.1)

  (nu = -1: beta~_t, nu = +1: beta_t; beta~ at index 0 is that of step 2, as above), with the
  betas of the schedule given (a respaced one when sampling with fewer steps).

Indices are 0-based: index t is the paper's step t + 1.
"""
from __future__ import annotations

from minidiff.diffusion._util import clip, exp, extract, raw, xp_of
from minidiff.diffusion.forward import predict_x0_from_eps, q_posterior

__all__ = ["p_mean_variance", "learned_log_variance", "VARIANCES"]

VARIANCES = ("fixed_small", "fixed_large", "learned")


def _fixed_large(schedule):
    """beta_t with index 0 replaced by beta~ of step 2 (log-variance then well defined)."""
    xp = xp_of(schedule.betas)
    variance = schedule.betas.copy()
    if variance.shape[0] > 1:
        variance[0] = schedule.posterior_variance[1]
    return variance, xp.log(variance)


def p_mean_variance(schedule, eps_pred, x_t, t, variance: str = "fixed_small",
                    clip_x0: bool = True):
    """Mean, variance, log-variance of p_theta(x_{t-1} | x_t) and the predicted x_0, (3.7).

    Returns a dict with ``mean``, ``variance``, ``log_variance`` (shape (N, 1, ..., 1), or
    x_t's shape when learned) and ``pred_x0``.  ``eps_pred`` may be an array or a Tensor (then
    mean and pred_x0 are Tensors); with ``variance="learned"`` it has 2C channels (13.1).
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance: expected one of {VARIANCES}, got {variance!r}")
    if variance == "learned":
        channels = raw(x_t).shape[1]
        if raw(eps_pred).shape[1] != 2 * channels:
            raise ValueError(f"eps_pred: variance 'learned' expects 2C = {2 * channels} "
                             f"channels (prediction, then nu), got {raw(eps_pred).shape[1]}")
        eps_pred, nu = eps_pred[:, :channels], eps_pred[:, channels:]
    pred_x0 = predict_x0_from_eps(schedule, x_t, t, eps_pred)
    if clip_x0:
        pred_x0 = clip(pred_x0, -1.0, 1.0)
    mean, post_var, post_log_var = q_posterior(schedule, pred_x0, raw(x_t), t)
    if variance == "fixed_small":
        var, log_var = post_var, post_log_var
    elif variance == "learned":
        log_var = learned_log_variance(schedule, nu, t)
        var = exp(log_var)
    else:
        large, log_large = _fixed_large(schedule)
        var, log_var = extract(large, t, x_t), extract(log_large, t, x_t)
    return {"mean": mean, "variance": var, "log_variance": log_var, "pred_x0": pred_x0}


def learned_log_variance(schedule, nu, t):
    """log sigma_t^2 = frac log beta_t + (1 - frac) log beta~_t, frac = (nu + 1) / 2 (13.1);
    ``nu`` (N, C, ...) an array or a Tensor (the result is then a Tensor)."""
    xp = xp_of(schedule.betas)
    min_log = extract(schedule.posterior_log_variance_clipped, t, nu)
    max_log = extract(xp.log(schedule.betas), t, nu)
    frac = (nu + 1.0) * 0.5
    return frac * max_log + (1.0 - frac) * min_log
