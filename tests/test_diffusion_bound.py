"""The bound (4.2) and its estimators by value (lesson 04):

* ``prior_kl`` and ``prior_term`` against the closed-form KL of two Gaussians (1.3), with
  alphabar_T multiplied out here, at several schedules, and against Monte Carlo once;
* every term of the bound, for every variance choice, against a brute-force expectation over
  x_t by Gauss-Hermite quadrature (60 nodes: exact to ~1e-12 for these smooth integrands) on a
  small T, with the exact denoiser of Gaussian data as the model (its terms are not zero);
* the Monte-Carlo bits/dim estimator: its mean over many independent draws is the exact bound
  within 5 standard errors, and 5 standard errors are smaller than the 1/T of the bound that an
  estimator off by a factor (T - 1)/T would miss by.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff import backend
from minidiff.diffusion import NoiseSchedule, bits_per_dim, prior_term, vlb_terms
from minidiff.diffusion.oracles import GaussianMixture
from tests.test_diffusion_strategies import DIFFUSION, dev, h, schedules


def _gauss_kl(m1, v1, m2, v2):
    """KL(N(m1, v1) || N(m2, v2)) per dimension, (4.3) written out."""
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


@DIFFUSION
@given(schedules(max_T=300), st.floats(-1, 1))
def test_prior_kl_and_prior_term_by_value(sched, x0):
    """L_T = KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) with abar_T = prod (1 - beta_t)."""
    abar_T = float(np.prod(1.0 - h(sched.betas)))
    assert sched.prior_kl() == pytest.approx(_gauss_kl(0.0, 1 - abar_T, 0.0, 1.0),
                                             rel=1e-9, abs=1e-15)
    want = _gauss_kl(math.sqrt(abar_T) * x0, 1 - abar_T, 0.0, 1.0)
    got = h(prior_term(sched, dev(np.full((2, 3), x0))))
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-14)


@pytest.mark.parametrize("name, T", [("linear", 1000), ("linear", 10), ("cosine", 1000),
                                     ("cosine", 4), ("scaled_linear", 1000),
                                     ("scaled_linear", 20)])
def test_prior_kl_at_named_schedules_is_not_a_mere_bound(name, T):
    """At each named schedule the value itself (not just an upper bound): for T = 1000 the
    prior nearly matches N(0, I) (KL ~ abar_T^2 / 4, tiny), at small T it does not."""
    sched = getattr(NoiseSchedule, name)(T)
    abar_T = float(np.prod(1.0 - h(sched.betas)))
    assert sched.prior_kl() == pytest.approx(_gauss_kl(0.0, 1 - abar_T, 0.0, 1.0), rel=1e-9)
    if abar_T < 0.1:   # the leading terms of 0.5 (-a - log(1 - a)) = a^2/4 + a^3/6 + a^4/8 ...
        assert sched.prior_kl() == pytest.approx(abar_T ** 2 / 4 + abar_T ** 3 / 6,
                                                 rel=abar_T ** 2)
    else:
        assert sched.prior_kl() > 1e-3


def test_prior_term_against_monte_carlo(float64):
    """E_{x_T ~ q}[log q(x_T | x_0) - log N(x_T; 0, 1)] by sampling, T = 10 (prior far from 0)."""
    sched = NoiseSchedule.linear(10, 0.01, 0.2)
    abar_T = float(np.prod(1 - h(sched.betas)))
    x0, n = 0.7, 400_000
    rng = np.random.default_rng(1)
    x_T = math.sqrt(abar_T) * x0 + math.sqrt(1 - abar_T) * rng.standard_normal(n)
    log_ratio = (-0.5 * (x_T - math.sqrt(abar_T) * x0) ** 2 / (1 - abar_T)
                 - 0.5 * math.log(1 - abar_T) + 0.5 * x_T ** 2)
    got = float(h(prior_term(sched, dev([[x0]])))[0])
    assert abs(log_ratio.mean() - got) < 5 * log_ratio.std() / math.sqrt(n), (log_ratio.mean(), got)


# ------------------------------------------------------------------ the bound by quadrature

SCHED = NoiseSchedule.linear(6, 0.05, 0.4)
DATA_MEAN, DATA_STD = 0.1, 0.4
X0 = np.array([-1.0, -0.3 - 0.3 / 255, 0.0 + 1 / 255, 0.6 + 0.2 / 255, 1.0])  # 256-level grid
X0 = np.round((X0 + 1) * 127.5) / 127.5 - 1


def _model():
    """The exact denoiser of N(0.1, 0.4^2) data (8.2): a fixed, non-trivial eps-network."""
    return GaussianMixture([[DATA_MEAN]], [DATA_STD]).model(SCHED)


def _bin_mass(x0, mean, sd):
    """P(x0 - 1/255 < X < x0 + 1/255) for X ~ N(mean, sd^2), edge bins open, by erfc on the
    side where both tails are small (no cancellation far from the mean)."""
    erfc = np.vectorize(math.erfc)
    upper = np.inf if x0 > 0.999 else (x0 + 1 / 255 - mean) / sd
    lower = -np.inf if x0 < -0.999 else (x0 - 1 / 255 - mean) / sd
    cdf = lambda z: 0.5 * erfc(-z / math.sqrt(2.0))      # noqa: E731
    sf = lambda z: 0.5 * erfc(z / math.sqrt(2.0))        # noqa: E731
    return np.where(lower > 0, sf(lower) - sf(upper), cdf(upper) - cdf(lower))


def brute_force_terms(variance):
    """Column t of the bound for each x0 in X0, by quadrature over x_t ~ q(x_t | x0) (2.4):
    t >= 1: E KL(q(x_t | x_{t+1}, x0) || p(x_t | x_{t+1})) (3.3)-(3.7), (4.3);
    t = 0:  E -log P(bin of x0 | N(mu(x_1), sigma_1^2)) (4.7), edge bins open."""
    betas = h(SCHED.betas)
    T = len(betas)
    abar = np.cumprod(1 - betas)
    prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1 - prev) / (1 - abar)
    p_var = post_var.copy() if variance == "fixed_small" else betas.copy()
    p_var[0] = post_var[1]                        # index 0: beta~ of step 2 in both choices
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    model = _model()
    out = np.zeros((len(X0), T))
    for i, x0 in enumerate(X0):
        for t in range(T):
            x_t = math.sqrt(abar[t]) * x0 + math.sqrt(1 - abar[t]) * nodes
            eps = h(model(dev(x_t[:, None]), dev(np.full(len(nodes), t))))[:, 0]
            p_mean = (x_t - betas[t] / math.sqrt(1 - abar[t]) * eps) / math.sqrt(1 - betas[t])
            if t == 0:
                value = -np.log(_bin_mass(x0, p_mean, math.sqrt(p_var[0])))
            else:
                q_mean = (betas[t] * math.sqrt(prev[t]) * x0
                          + (1 - prev[t]) * math.sqrt(1 - betas[t]) * x_t) / (1 - abar[t])
                value = _gauss_kl(q_mean, post_var[t], p_mean, p_var[t])
            out[i, t] = (weights * value).sum()
    prior = _gauss_kl(np.sqrt(abar[-1]) * X0, 1 - abar[-1], 0.0, 1.0)
    return prior, out


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_every_term_of_the_bound_by_quadrature(variance, float64):
    prior, want = brute_force_terms(variance)
    n = 4000                                       # draws of x_t per x0
    x0 = dev(np.repeat(X0, n)[:, None])
    backend.manual_seed(7)
    out = vlb_terms(SCHED, _model(), x0, variance=variance)
    terms = h(out["terms"]).reshape(len(X0), n, -1)
    mean, se = terms.mean(1), terms.std(1, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(mean - want) < 5 * se + 1e-9), (mean - want) / (se + 1e-300)
    np.testing.assert_allclose(h(out["prior"]).reshape(len(X0), n)[:, 0], prior, rtol=1e-9)
    assert want[:, 1:].min() > 1e-3               # the KL terms are not all ~0: they can fail
    # the two variance choices give different bounds: a bound that ignored the choice fails
    other = brute_force_terms("fixed_large" if variance == "fixed_small" else "fixed_small")[1]
    assert np.abs(other.sum(1) - want.sum(1)).max() > 20 * (se ** 2).sum(1).max() ** 0.5


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_monte_carlo_bits_per_dim_is_unbiased(variance, float64):
    """bits_per_dim(num_samples=k): L_T + (T / k) sum_j L_{t_j}, t_j uniform, per item.  Items
    that share one x0 are independent draws of the estimator; their mean must be the exact bound
    (quadrature) within 5 standard errors, and those 5 standard errors must be below the 1/T
    share of the bound (the error of a (T - 1)/T factor) by a margin."""
    prior, terms = brute_force_terms(variance)
    exact_bpd = (prior + terms.sum(1)) / math.log(2.0)
    T = SCHED.num_timesteps
    n = 10_000
    for i, x0 in enumerate(X0[[1, 3]]):
        backend.manual_seed(8 + i)
        out = bits_per_dim(SCHED, _model(), dev(np.full((n, 1), x0)), num_samples=4,
                           variance=variance)
        per_item = h(out["per_item"])
        se = per_item.std(ddof=1) / math.sqrt(n)
        want = exact_bpd[[1, 3][i]]
        assert 5 * se < 0.5 * (want - prior[[1, 3][i]] / math.log(2)) / T, (se, want)
        assert abs(per_item.mean() - want) < 5 * se, (per_item.mean(), want, se)
        assert out["bpd"] == pytest.approx(per_item.mean()) and out["stderr"] == pytest.approx(se)
    full = bits_per_dim(SCHED, _model(), dev(np.repeat(X0, 2000)[:, None]), variance=variance)
    per_x0 = h(full["per_item"]).reshape(len(X0), -1)
    se = per_x0.std(1, ddof=1) / math.sqrt(per_x0.shape[1])
    assert np.all(np.abs(per_x0.mean(1) - exact_bpd) < 5 * se + 1e-9)


def test_monte_carlo_bits_per_dim_adds_the_prior_term(float64):
    """With the exact denoiser of a one-point data set every KL term L_{t-1}, t > 1, is 0, so
    the estimator (L_T and L_0 exact, the KL terms sampled) gives every item exactly
    L_T + L_0, whichever steps it draws: a dropped or doubled prior term shows at once."""
    k, x0 = 4, X0[3]
    point = GaussianMixture([[x0]], [1e-12]).model(SCHED)
    prior = float(h(prior_term(SCHED, dev([[x0]])))[0])
    l0 = float(h(vlb_terms(SCHED, point, dev([[x0]]))["terms"])[0, 0])
    backend.manual_seed(9)
    per_item = h(bits_per_dim(SCHED, point, dev(np.full((200, 1), x0)), num_samples=k)
                 ["per_item"]) * math.log(2.0)
    np.testing.assert_allclose(per_item, prior + l0, rtol=1e-9, atol=1e-9)
    assert prior > 1e-3 and l0 > 1e-3
