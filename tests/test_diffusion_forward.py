"""Closed-form forward process against the step-by-step chain (exactly, by merging Gaussians,
and by Monte Carlo), per-item broadcasting, and the eps / x0 / v conversions."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidiff
from minidiff import backend
from minidiff.diffusion import (NoiseSchedule, as_eps_model, predict_eps_from_v, predict_eps_from_x0,
                                predict_v, predict_x0_from_eps, predict_x0_from_v,
                                q_mean_variance, q_sample)
from tests.test_diffusion_strategies import DIFFUSION, dev, h, schedule_and_t, schedules


@DIFFUSION
@given(schedule_and_t(), st.floats(-3, 3))
def test_closed_form_equals_composed_gaussian_steps(sched_t, x0):
    """Push N(m, v) through x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps one step at a
    time: the result of two independent Gaussians is N(a m, a^2 v + b^2)."""
    sched, t = sched_t
    betas = h(sched.betas)
    x = dev(np.full((t.size, 1), x0))
    mean, var, log_var = q_mean_variance(sched, x, dev(t))
    for i, step in enumerate(t):
        m, v = x0, 0.0
        for b in betas[: step + 1]:  # index `step` is the paper's step step+1
            m, v = math.sqrt(1 - b) * m, (1 - b) * v + b
        np.testing.assert_allclose(h(mean)[i, 0], m, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(h(var)[i, 0], v, rtol=1e-9)
        np.testing.assert_allclose(math.exp(h(log_var)[i, 0]), v, rtol=1e-9)


@DIFFUSION
@given(schedules(max_T=30), st.floats(-2, 2), st.integers(0, 2**31 - 1))
def test_closed_form_matches_monte_carlo_chain(sched, x0, seed):
    """Simulate the chain with 4000 samples; compare mean and variance of x_T with the closed
    form at 5 standard errors (se of the mean sqrt(v/n), of the variance v sqrt(2/(n-1)))."""
    rng = np.random.default_rng(seed)
    n = 4000
    x = np.full(n, x0)
    for b in h(sched.betas):
        x = math.sqrt(1 - b) * x + math.sqrt(b) * rng.standard_normal(n)
    T = sched.num_timesteps
    mean, var, _ = q_mean_variance(sched, dev(np.array([[x0]])), dev(np.array([T - 1])))
    m, v = h(mean).item(), h(var).item()
    assert abs(x.mean() - m) < 5 * math.sqrt(v / n)
    assert abs(x.var(ddof=1) - v) < 5 * v * math.sqrt(2 / (n - 1))


def test_q_sample_is_per_item_and_broadcasts():
    sched = NoiseSchedule.linear(10)
    x0 = dev(np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4) / 24)
    noise = dev(np.ones((2, 3, 4)))
    t = dev(np.array([0, 9]))
    out = h(q_sample(sched, x0, t, noise))
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 10))
    for i, step in enumerate([0, 9]):
        want = math.sqrt(abar[step]) * h(x0)[i] + math.sqrt(1 - abar[step])
        np.testing.assert_allclose(out[i], want, rtol=1e-12)
    with pytest.raises(ValueError, match="t: expected"):
        q_sample(sched, x0, dev(np.array([0, 10])), noise)
    with pytest.raises(ValueError, match=r"t: expected shape \(2,\)"):
        q_sample(sched, x0, dev(np.array([0, 1, 2])), noise)


@DIFFUSION
@given(schedule_and_t(n=3), st.integers(0, 2**31 - 1))
def test_eps_x0_v_conversions(sched_t, seed):
    sched, t = sched_t
    rng = np.random.default_rng(seed)
    x0, eps = dev(rng.standard_normal((3, 5))), dev(rng.standard_normal((3, 5)))
    t = dev(t)
    x_t = q_sample(sched, x0, t, eps)
    v = predict_v(sched, x0, t, eps)
    # (x_t, v) is a rotation of (x_0, eps): lengths are kept
    np.testing.assert_allclose(h(x_t) ** 2 + h(v) ** 2, h(x0) ** 2 + h(eps) ** 2, rtol=1e-9,
                               atol=1e-9)
    abar = h(sched.alphas_cumprod)[h(t)][:, None]
    # accuracy of x0 from eps degrades as 1/sqrt(abar): scale the tolerance with it
    tol = 1e-9 / np.sqrt(abar)
    assert (np.abs(h(predict_x0_from_eps(sched, x_t, t, eps)) - h(x0)) <= tol * 10).all()
    np.testing.assert_allclose(h(predict_x0_from_v(sched, x_t, t, v)), h(x0), atol=1e-9)
    np.testing.assert_allclose(h(predict_eps_from_v(sched, x_t, t, v)), h(eps), atol=1e-9)
    good = abar[:, 0] < 1 - 1e-6  # eps from x0 divides by sqrt(1/abar - 1)
    np.testing.assert_allclose(h(predict_eps_from_x0(sched, x_t, t, x0))[good], h(eps)[good],
                               rtol=1e-5, atol=1e-5)


def test_q_sample_with_tensors_passes_gradients(float64):
    sched = NoiseSchedule.linear(5)
    x0 = minidiff.tensor(np.ones((2, 3)), requires_grad=True)
    eps = minidiff.tensor(np.zeros((2, 3)), requires_grad=True)
    t = dev(np.array([1, 4]))
    out = q_sample(sched, x0, t, eps)
    assert isinstance(out, minidiff.Tensor)
    out.sum().backward()
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 5))[[1, 4]]
    np.testing.assert_allclose(h(x0.grad), np.sqrt(abar)[:, None] * np.ones((2, 3)))
    np.testing.assert_allclose(h(eps.grad), np.sqrt(1 - abar)[:, None] * np.ones((2, 3)))
    assert backend.backend_name_of(out.data) == backend.get_backend()


@DIFFUSION
@given(schedule_and_t(n=3), st.integers(0, 2**31 - 1))
def test_x0_and_v_networks_seen_as_eps_networks(sched_t, seed):
    """A network that returns the true x_0 (or the true v, written out by hand from the
    cumulative product of 1 - beta) must be turned into one that returns the true eps."""
    sched, t = sched_t
    rng = np.random.default_rng(seed)
    x0, eps = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    abar = np.cumprod(1.0 - h(sched.betas))[t][:, None]
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    v = np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0
    seen = []
    as_v = as_eps_model(lambda x, tt: seen.append(h(tt)) or dev(v), sched, "v")
    np.testing.assert_allclose(h(as_v(dev(x_t), dev(t))), eps, atol=1e-9)
    assert (seen[0] == t).all()
    good = abar[:, 0] < 1 - 1e-6  # eps from x_0 divides by sqrt(1 - abar)
    as_x0 = as_eps_model(lambda x, tt: dev(x0), sched, "x0")
    np.testing.assert_allclose(h(as_x0(dev(x_t), dev(t)))[good], eps[good], rtol=1e-5,
                               atol=1e-5)
    network = lambda x, tt: x  # noqa: E731
    assert as_eps_model(network, sched, "eps") is network


def test_unknown_prediction_is_refused():
    with pytest.raises(ValueError, match="prediction.*'score'"):
        as_eps_model(lambda x, t: x, NoiseSchedule.linear(4), "score")
