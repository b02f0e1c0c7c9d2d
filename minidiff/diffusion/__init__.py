"""``minidiff.diffusion``: the mathematics of DDPM (lessons 01-04).

* ``schedule``  — ``NoiseSchedule`` (linear, cosine, scaled_linear, from betas) and every derived
  array (lesson 02; posterior coefficients, lesson 03);
* ``forward``   — closed-form q(x_t | x_0) (2.4), posterior (3.3)-(3.4), eps / x_0 / v
  conversions (2.5)-(2.6), and ``as_eps_model`` for networks that predict x_0 or v;
* ``reverse``   — p_theta(x_{t-1} | x_t) from predicted noise (3.7);
* ``losses``    — L_simple (4.6), Min-SNR weights (4.9), Gaussian KL (4.3), discretized
  decoder (4.7);
* ``vlb``       — every term of the variational bound (4.2), bits per dim (4.8);
* ``respace``   — fewer sampling steps with betas re-derived from alphabar;
* ``samplers``  — DDPM (Algorithm 2), DDIM and DDIM inversion;
* ``training``  — one step of Algorithm 1.

Convention used throughout: arrays and timesteps are 0-based, **index t is the paper's step t+1**.
Functions are free functions taking the schedule as their first argument (models first for the
samplers, mirroring ``sampler(model, schedule, ...)``).
"""
from minidiff.diffusion.forward import (EpsFromPrediction, PREDICTIONS, as_eps_model,
                                        predict_eps_from_v, predict_eps_from_x0, predict_v,
                                        predict_x0_from_eps, predict_x0_from_v, q_mean_variance,
                                        q_posterior, q_sample)
from minidiff.diffusion.losses import (discretized_gaussian_log_likelihood, erfc, loss_simple,
                                       min_snr_weight, normal_cdf, normal_kl)
from minidiff.diffusion.resample import T_SAMPLERS
from minidiff.diffusion.respace import respace, space_timesteps
from minidiff.diffusion.reverse import VARIANCES, p_mean_variance
from minidiff.diffusion.samplers import (SAMPLERS, ddim_invert, ddim_sample, ddim_step,
                                         ddpm_sample, run_sampler)
from minidiff.diffusion.schedule import NoiseSchedule, SCHEDULES
from minidiff.diffusion.training import OBJECTIVES, training_step
from minidiff.diffusion.vlb import bits_per_dim, prior_term, vlb_term_at, vlb_terms

__all__ = [
    "NoiseSchedule", "SCHEDULES", "PREDICTIONS", "VARIANCES", "OBJECTIVES", "T_SAMPLERS", "EpsFromPrediction", "as_eps_model", "q_sample",
    "q_mean_variance", "q_posterior", "predict_x0_from_eps",
    "predict_eps_from_x0", "predict_v", "predict_x0_from_v", "predict_eps_from_v",
    "p_mean_variance", "loss_simple", "min_snr_weight", "normal_kl", "erfc", "normal_cdf",
    "discretized_gaussian_log_likelihood", "vlb_terms", "vlb_term_at", "prior_term",
    "bits_per_dim", "respace", "space_timesteps", "ddpm_sample", "ddim_sample", "ddim_step",
    "ddim_invert", "SAMPLERS", "run_sampler", "training_step",
]
