"""Noise schedules: the betas of the forward process and every quantity derived from them
(lessons 01 and 02).

The forward process adds Gaussian noise in T small steps (lesson 01, equation (1.1)):

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I),   t = 1..T.

With alpha_t = 1 - beta_t and alphabar_t = prod_{s<=t} alpha_s, merging the steps gives the
closed form (2.4) q(x_t | x_0) = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I), and Bayes' rule
gives the posterior (lesson 03, (3.3)-(3.4))

    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I),
    beta~_t = beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t)                    (3.3)
    mu~_t   = posterior_mean_coef1 x_0 + posterior_mean_coef2 x_t, with          (3.4)
    posterior_mean_coef1 = beta_t sqrt(alphabar_{t-1}) / (1 - alphabar_t),
    posterior_mean_coef2 = (1 - alphabar_{t-1}) sqrt(alpha_t) / (1 - alphabar_t).

The signal-to-noise ratio of x_t is snr_t = alphabar_t / (1 - alphabar_t) (2.7).

**Indexing.**  Every array here is 0-based: index t holds the paper's step t + 1.  So
``betas[0]`` is beta_1, ``alphas_cumprod[T-1]`` is alphabar_T, and ``alphas_cumprod_prev[0]``
is alphabar_0 = 1 (no noise yet).

Schedules (2.8)-(2.10):

* ``linear``: beta_t evenly spaced from 1e-4 to 0.02 (Ho et al. 2020, T = 1000);
* ``cosine``: alphabar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), betas from
  consecutive ratios, clipped at 0.999 (Nichol & Dhariwal 2021);
* ``scaled_linear``: sqrt(beta_t) evenly spaced (Stable Diffusion's, 0.00085 to 0.012);
* any given betas: ``NoiseSchedule(betas)`` or ``NoiseSchedule.from_betas(betas)``.

All arrays are float64 on the active backend.
"""
from __future__ import annotations

import math
import operator

from minidiff import backend

__all__ = ["NoiseSchedule", "SCHEDULES"]

#: the schedules a configuration may name (``NoiseSchedule.<name>(T)``)
SCHEDULES = ("linear", "cosine", "scaled_linear")


def _check_T(T) -> int:
    try:
        if isinstance(T, bool):
            raise TypeError
        T = operator.index(T)
    except TypeError:
        raise ValueError(f"T: expected an integer >= 1, got {T!r}") from None
    if T < 1:
        raise ValueError(f"T: expected an integer >= 1, got {T}")
    return T


def _check_beta(name: str, value) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}: expected a value in (0, 1), got {value!r}")
    return value


def _check_alphas_cumprod(abar) -> None:
    host = backend.host
    inside = (abar > 0.0) & (abar < 1.0)
    falling = host.append(True, host.diff(abar) < 0)
    bad = ~(inside & falling)
    if bad.any():
        i = int(host.argmax(bad))
        raise ValueError(f"alphas_cumprod: expected strictly decreasing values in (0, 1), got "
                         f"alphas_cumprod[{i}] = {float(abar[i])!r} (after "
                         f"{float(abar[i - 1]) if i else 1.0!r}; betas too close to 0 or 1 "
                         f"underflow the product)")


class NoiseSchedule:
    """The betas of a forward process and the derived arrays (module docstring, lesson 02).

    ``NoiseSchedule(betas)`` accepts any 1-D sequence with every value in (0, 1).
    """

    def __init__(self, betas, name: str = "custom", _alphas_cumprod=None):
        host = backend.host
        host_betas = host.asarray(backend.to_host(betas), dtype=host.float64)
        if host_betas.ndim != 1 or host_betas.size < 1:
            raise ValueError(f"betas: expected a 1-D sequence of at least 1 value, got shape "
                             f"{host_betas.shape}")
        if _alphas_cumprod is None:
            bad = ~((host_betas > 0.0) & (host_betas < 1.0))
            if bad.any():
                i = int(host.argmax(bad))
                raise ValueError(f"betas: expected every value in (0, 1), got betas[{i}] = "
                                 f"{float(host_betas[i])!r}")
            abar = host.cumprod(1.0 - host_betas)
        else:
            abar = _alphas_cumprod
        _check_alphas_cumprod(abar)
        self._build(host_betas, abar, name)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, name: str = "custom") -> "NoiseSchedule":
        """The schedule whose alphabar is exactly ``alphas_cumprod`` (strictly decreasing in
        (0, 1)): beta_t = 1 - alphabar_t / alphabar_{t-1} with alphabar_0 = 1.  Used by
        respacing, where keeping alphabar exact matters more than the betas' last digit."""
        host = backend.host
        abar = host.asarray(backend.to_host(alphas_cumprod), dtype=host.float64)
        if abar.ndim != 1 or abar.size < 1:
            raise ValueError(f"alphas_cumprod: expected a 1-D sequence of at least 1 value, "
                             f"got shape {abar.shape}")
        _check_alphas_cumprod(abar)
        betas = 1.0 - abar / host.append(1.0, abar[:-1])
        return cls(betas, name=name, _alphas_cumprod=abar)

    def _build(self, host_betas, abar, name):
        host = backend.host
        xp = backend.xp()
        self.name = name
        self.num_timesteps = int(host_betas.size)
        self.T = self.num_timesteps

        def dev(a):
            return xp.asarray(a, dtype=xp.float64)

        abar_prev = host.append(1.0, abar[:-1])
        post_var = host_betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta~_1 = 0 (x_0 is known given x_1): log-variance clipped with beta~_2 as in
        # improved-diffusion; with T = 1 there is no beta~_2 and beta_1 is used.
        first = post_var[1] if post_var.size > 1 else host_betas[0]
        self.betas = dev(host_betas)
        self.alphas = dev(1.0 - host_betas)
        self.alphas_cumprod = dev(abar)
        self.alphas_cumprod_prev = dev(abar_prev)
        self.sqrt_alphas_cumprod = dev(host.sqrt(abar))
        self.sqrt_one_minus_alphas_cumprod = dev(host.sqrt(1.0 - abar))
        self.log_one_minus_alphas_cumprod = dev(host.log(1.0 - abar))
        self.sqrt_recip_alphas_cumprod = dev(host.sqrt(1.0 / abar))
        self.sqrt_recipm1_alphas_cumprod = dev(host.sqrt(1.0 / abar - 1.0))
        self.posterior_variance = dev(post_var)
        self.posterior_log_variance_clipped = dev(host.log(host.append(first, post_var[1:])))
        self.posterior_mean_coef1 = dev(host_betas * host.sqrt(abar_prev) / (1.0 - abar))
        self.posterior_mean_coef2 = dev((1.0 - abar_prev) * host.sqrt(1.0 - host_betas)
                                        / (1.0 - abar))
        self.snr = dev(abar / (1.0 - abar))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_betas(cls, betas, name: str = "custom") -> "NoiseSchedule":
        """The schedule of the given betas (index t holds beta_{t+1})."""
        return cls(betas, name=name)

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        """beta_t = beta_start + (t-1)/(T-1) (beta_end - beta_start), (2.8) (Ho et al.)."""
        T = _check_T(T)
        beta_start = _check_beta("beta_start", beta_start)
        beta_end = _check_beta("beta_end", beta_end)
        betas = backend.host.linspace(beta_start, beta_end, T, dtype=backend.host.float64)
        return cls(betas, name="linear")

    @classmethod
    def scaled_linear(cls, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
        """sqrt(beta_t) evenly spaced from sqrt(beta_start) to sqrt(beta_end), (2.10)."""
        T = _check_T(T)
        beta_start = _check_beta("beta_start", beta_start)
        beta_end = _check_beta("beta_end", beta_end)
        root = backend.host.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T,
                                     dtype=backend.host.float64)
        return cls(root ** 2, name="scaled_linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        """alphabar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2);
        beta_t = min(1 - alphabar(t)/alphabar(t-1), max_beta), (2.9) (Nichol & Dhariwal)."""
        T = _check_T(T)
        s = float(s)
        if not 0.0 < s < 1.0:
            raise ValueError(f"s: expected an offset in (0, 1), got {s!r}")
        max_beta = _check_beta("max_beta", max_beta)
        host = backend.host
        steps = host.arange(T + 1, dtype=host.float64) / T
        f = host.cos((steps + s) / (1.0 + s) * math.pi / 2.0) ** 2
        betas = host.minimum(1.0 - f[1:] / f[:-1], max_beta)
        betas = host.maximum(betas, 1e-12)  # f is decreasing; guard against rounding to 0
        return cls(betas, name="cosine")

    # ------------------------------------------------------------------ helpers
    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, T={self.num_timesteps})"

    def prior_kl(self) -> float:
        """KL(q(x_T | x_0) || N(0, I)) per dimension for x_0 = 0 (lesson 01, (1.4)):
        0.5 (alphabar_T x0^2 + (1 - alphabar_T) - 1 - log(1 - alphabar_T))."""
        abar_T = float(self.alphas_cumprod[-1])
        return 0.5 * (-abar_T - math.log1p(-abar_T))
