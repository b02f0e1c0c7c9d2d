"""The forward (noising) process in closed form, its posterior, and the conversions between
the three things a network may predict: the noise eps, the clean data x_0, or the velocity v
(lessons 02 and 03).

Closed form (lesson 02, (2.4)), by the reparameterization trick (2.1) and merging the
independent Gaussian noises of every step (2.2)-(2.3):

    x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps,   eps ~ N(0, I).

Solving for x_0 (2.5):

    x_0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)
        = sqrt(1/alphabar_t) x_t - sqrt(1/alphabar_t - 1) eps.

The velocity (Salimans & Ho 2022; lesson 02, (2.6)) rotates (x_0, eps) by the angle phi_t with
cos phi_t = sqrt(alphabar_t), sin phi_t = sqrt(1 - alphabar_t):

    v   = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t) x_0,
    x_0 = sqrt(alphabar_t) x_t - sqrt(1 - alphabar_t) v,
    eps = sqrt(1 - alphabar_t) x_t + sqrt(alphabar_t) v.

The posterior (lesson 03, (3.3)-(3.4)): q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) with
mu~_t = posterior_mean_coef1[t] x_0 + posterior_mean_coef2[t] x_t (see ``schedule.py``).

Every function takes the schedule first and a per-item timestep vector ``t`` of shape (N,)
(an int is repeated), **0-based: index t is the paper's step t + 1**; t = 0 gives x_1.
x_0, x_t, eps may be backend arrays or minidiff Tensors; with Tensors the result is a Tensor
built from Tensor arithmetic, so gradients flow through it.
"""
from __future__ import annotations

from minidiff.diffusion._util import extract, xp_of
from minidiff.ops import concatenate
from minidiff.tensor import Tensor

__all__ = ["q_sample", "q_mean_variance", "q_posterior", "predict_x0_from_eps",
           "predict_eps_from_x0", "predict_v", "predict_x0_from_v", "predict_eps_from_v",
           "PREDICTIONS", "EpsFromPrediction", "as_eps_model"]

#: what a network may be trained to predict (lesson 02, (2.5)-(2.6))
PREDICTIONS = ("eps", "x0", "v")


def q_mean_variance(schedule, x0, t):
    """Mean, variance and log-variance of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),
    equation (2.4).  Variance and log-variance have shape (N, 1, ..., 1)."""
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
    variance = extract(1.0 - schedule.alphas_cumprod, t, x0)
    log_variance = extract(schedule.log_one_minus_alphas_cumprod, t, x0)
    return mean, variance, log_variance


def q_sample(schedule, x0, t, noise):
    """x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, equation (2.4).

    ``t`` (shape (N,), 0-based: index t is step t+1) broadcasts over the other axes of x0.
    """
    return (extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise)


def q_posterior(schedule, x0, x_t, t):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), (3.3)-(3.4):

        mu~_t = coef1_t x_0 + coef2_t x_t,   beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t).

    At index 0 (step 1) beta~ = 0: the log-variance is clipped to log beta~ of step 2.
    """
    mean = (extract(schedule.posterior_mean_coef1, t, x_t) * x0
            + extract(schedule.posterior_mean_coef2, t, x_t) * x_t)
    variance = extract(schedule.posterior_variance, t, x_t)
    log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance


def predict_x0_from_eps(schedule, x_t, t, eps):
    """x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps, equation (2.5)."""
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)


def predict_eps_from_x0(schedule, x_t, t, x0):
    """eps = (sqrt(1/abar_t) x_t - x_0) / sqrt(1/abar_t - 1), equation (2.5) solved for eps."""
    return ((extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
            / extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t))


def predict_v(schedule, x0, t, eps):
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, equation (2.6)."""
    return (extract(schedule.sqrt_alphas_cumprod, t, x0) * eps
            - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0)


def predict_x0_from_v(schedule, x_t, t, v):
    """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v, equation (2.6)."""
    return (extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t
            - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * v)


def predict_eps_from_v(schedule, x_t, t, v):
    """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v, equation (2.6)."""
    return (extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
            + extract(schedule.sqrt_alphas_cumprod, t, x_t) * v)


class EpsFromPrediction:
    """A network that predicts x_0 or v, seen as the eps_theta(x_t, t) the samplers and the
    bound (lessons 03-04) are written for, through (2.5) or (2.6).

    Why predict anything but eps: at large t, x_0 = (x_t - sqrt(1 - abar_t) eps)/sqrt(abar_t)
    multiplies the error of eps by sqrt(1/abar_t - 1) (about 160 at t = T for the linear
    schedule), so a briefly trained eps-network gives wild x_0 estimates early in sampling.
    v-prediction has no such factor: x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v (lesson 04,
    (4.12)).

    Attributes other than the call (``config``, ``parameters``, ...) are the network's.
    """

    def __init__(self, model, schedule, prediction: str):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction: expected one of {PREDICTIONS}, got {prediction!r}")
        self.model, self.schedule, self.prediction = model, schedule, prediction

    def __call__(self, x_t, t):
        out = self.model(x_t, t)
        channels = x_t.shape[1]
        extra = None
        if out.shape[1] == 2 * channels:        # a learned variance: v passes through
            out, extra = out[:, :channels], out[:, channels:]
        if self.prediction == "v":
            out = predict_eps_from_v(self.schedule, x_t, t, out)
        elif self.prediction == "x0":
            out = predict_eps_from_x0(self.schedule, x_t, t, out)
        return out if extra is None else _concatenate([out, extra])

    def __getattr__(self, name):
        return getattr(self.model, name)


def _concatenate(parts):
    """Channel-wise concatenation of arrays or Tensors."""
    if any(isinstance(p, Tensor) for p in parts):
        return concatenate([p if isinstance(p, Tensor) else Tensor(p) for p in parts], axis=1)
    return xp_of(parts[0]).concatenate(parts, axis=1)


def as_eps_model(model, schedule, prediction: str = "eps"):
    """``model`` itself when it predicts eps, else wrapped in ``EpsFromPrediction`` (which
    converts the first C channels and passes a learned variance's v channels through)."""
    return model if prediction == "eps" else EpsFromPrediction(model, schedule, prediction)
