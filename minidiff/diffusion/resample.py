"""Drawing the timestep of a training step: uniformly, or by importance (lesson 13).

The bound is a sum over t, L = sum_t L_t.  Drawing t ~ Uniform{0..T-1} and using T L_t gives an
unbiased estimate, but the L_t differ by orders of magnitude (the decoder L_0 and the first
KL terms dominate), so the estimate's variance is huge.  Any distribution p_t > 0 with the
weight 1 / (T p_t) on the uniform-t loss T L_t keeps it unbiased,

    E_{t ~ p}[ T L_t / (T p_t) ] = sum_t L_t,                                       (13.3)

and the variance is smallest for p_t proportional to sqrt(E[L_t^2]) (Nichol & Dhariwal 2021,
section 3.3).  ``LossSecondMomentSampler`` estimates E[L_t^2] from the last ``history``
losses seen at each t; until every t has ``history`` of them it draws uniformly; then

    p_t = (1 - u) sqrt(mean of L_t^2) / sum_s sqrt(mean of L_s^2) + u / T,   u = 0.001.

Its state (a ring buffer of losses per t and how many were seen) is two arrays stored in the
training checkpoint, and its draws come from minidiff's generator, so a resumed run is exact.
"""
from __future__ import annotations

from minidiff import backend

__all__ = ["LossSecondMomentSampler", "T_SAMPLERS", "second_moment_probabilities",
           "estimator_variance"]

T_SAMPLERS = ("uniform", "loss-second-moment")


class LossSecondMomentSampler:
    """Importance sampling of t by the second moment of its recent losses (13.3)."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        host = backend.host
        self.num_timesteps, self.history_size, self.uniform_prob = (
            int(num_timesteps), int(history), float(uniform_prob))
        self.history = host.zeros((self.num_timesteps, self.history_size), dtype=host.float64)
        self.counts = host.zeros((self.num_timesteps,), dtype=host.int64)

    def warmed_up(self) -> bool:
        return bool((self.counts >= self.history_size).all())

    def probabilities(self):
        """p_t (host float64, (T,)): uniform until every t has ``history`` losses."""
        host, T = backend.host, self.num_timesteps
        if not self.warmed_up():
            return host.full((T,), 1.0 / T)
        return second_moment_probabilities(self.history.T, self.uniform_prob)

    def draw(self, n: int):
        """``(t, weights)``: n indices drawn from p_t (device int64) by inverting the CDF at
        uniform draws of minidiff's generator, and their weights 1 / (T p_t) (device)."""
        host = backend.host
        p = self.probabilities()
        u = backend.to_host(backend.rand(int(n), dtype=host.float64))
        t = host.minimum(host.searchsorted(host.cumsum(p), u, side="right"),
                         self.num_timesteps - 1).astype(host.int64)
        weights = 1.0 / (self.num_timesteps * p[t])
        return backend.to_device(t), backend.to_device(weights)

    def update(self, t, losses) -> None:
        """Append the per-item ``losses`` at timesteps ``t`` (in batch order) to each t's
        ring buffer of the last ``history``."""
        host, size = backend.host, self.history_size
        t = host.asarray(backend.to_host(t), dtype=host.int64).reshape(-1)
        losses = host.asarray(backend.to_host(losses), dtype=host.float64).reshape(-1)
        order = host.argsort(t, kind="stable")
        t, losses = t[order], losses[order]
        first = host.searchsorted(t, t, side="left")
        rank = host.arange(len(t)) - first                   # position within its t's group
        seen = host.bincount(t, minlength=self.num_timesteps)[t]
        keep = rank >= seen - size                           # only the last ``size`` count
        slot = (self.counts[t] + rank) % size
        self.history[t[keep], slot[keep]] = losses[keep]
        self.counts += host.bincount(t, minlength=self.num_timesteps)

    def state_dict(self) -> dict:
        return {"history": self.history.copy(), "counts": self.counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        host = backend.host
        history = host.asarray(state["history"], dtype=host.float64)
        if history.shape != self.history.shape:
            raise ValueError(f"t_sampler.history: expected shape {self.history.shape}, got "
                             f"{history.shape}")
        self.history = history.copy()
        self.counts = host.asarray(state["counts"], dtype=host.int64).copy()


def second_moment_probabilities(losses, uniform_prob: float = 0.001):
    """p_t = (1 - u) sqrt(mean L_t^2) / sum_s sqrt(mean L_s^2) + u / T (13.3) from ``losses``
    (K, T): K losses seen at each of the T timesteps (host float64 (T,))."""
    host = backend.host
    losses = host.asarray(backend.to_host(losses), dtype=host.float64)
    root = host.sqrt((losses ** 2).mean(axis=0))
    T = losses.shape[1]
    p = root / root.sum() if root.sum() > 0 else host.full((T,), 1.0 / T)
    return (1.0 - uniform_prob) * p + uniform_prob / T


def estimator_variance(terms, p=None) -> float:
    """Variance of the one-draw estimate of a sum L = sum_t L_t that draws t ~ p and weighs
    its term by 1 / p_t (13.3), over both the image and the draw of t:

        Var = mean_i [ sum_t L_t(x_i)^2 / p_t ] - (mean_i L(x_i))^2.                 (13.4)

    ``terms`` (N, T): the per-t terms of N images (e.g. ``vlb_terms(...)["terms"]``); ``p``
    (T,): the draw's probabilities, uniform 1 / T when None (the estimate is then T L_t).
    The part due to the images alone is the same for every p, so the difference between two
    p is all in the draw of t.  Returned in the squared units of ``terms`` (host float)."""
    host = backend.host
    terms = host.asarray(backend.to_host(terms), dtype=host.float64)
    T = terms.shape[1]
    p = host.full((T,), 1.0 / T) if p is None else host.asarray(backend.to_host(p), host.float64)
    if p.shape != (T,) or (p <= 0).any():
        raise ValueError(f"p: expected {T} positive probabilities, got shape {p.shape}")
    second = ((terms ** 2) / p).sum(axis=1).mean()
    return float(second - terms.sum(axis=1).mean() ** 2)
