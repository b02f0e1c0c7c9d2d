"""NoiseSchedule: derived arrays against loops over the paper's definitions, monotonicity,
the prior's KL, and clear errors for bad input."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff import backend
from minidiff.diffusion import NoiseSchedule
from tests.test_diffusion_strategies import DIFFUSION, h, schedules


@DIFFUSION
@given(schedules())
def test_derived_arrays_match_definitions(sched):
    betas = h(sched.betas)
    T = betas.size
    abar, prod = [], 1.0
    for b in betas:  # alphabar_t = prod_{s <= t} (1 - beta_s), one step at a time
        prod *= 1.0 - b
        abar.append(prod)
    abar = np.array(abar)
    prev = np.concatenate([[1.0], abar[:-1]])
    np.testing.assert_allclose(h(sched.alphas_cumprod), abar, rtol=1e-12)
    np.testing.assert_allclose(h(sched.alphas_cumprod_prev), prev, rtol=1e-12)
    np.testing.assert_allclose(h(sched.sqrt_recip_alphas_cumprod) ** 2 * abar, 1.0, rtol=1e-10)
    np.testing.assert_allclose(h(sched.sqrt_recipm1_alphas_cumprod) ** 2, (1 - abar) / abar,
                               rtol=1e-9)
    np.testing.assert_allclose(h(sched.sqrt_alphas_cumprod) ** 2
                               + h(sched.sqrt_one_minus_alphas_cumprod) ** 2, 1.0, rtol=1e-12)
    np.testing.assert_allclose(h(sched.snr), abar / (1 - abar), rtol=1e-9)
    for name in ("betas", "alphas_cumprod", "posterior_variance", "snr"):
        assert getattr(sched, name).dtype == np.float64
        assert backend.backend_name_of(getattr(sched, name)) == backend.get_backend()
    assert T == len(sched)


@DIFFUSION
@given(schedules())
def test_alphabar_strictly_decreasing_in_unit_interval_and_snr_decreasing(sched):
    abar = h(sched.alphas_cumprod)
    assert ((abar > 0) & (abar < 1)).all()
    assert (np.diff(abar) < 0).all()
    assert (np.diff(h(sched.snr)) < 0).all()
    assert (h(sched.posterior_variance)[1:] > 0).all() and h(sched.posterior_variance)[0] == 0


def test_paper_schedule_prior_is_nearly_standard_normal():
    sched = NoiseSchedule.linear(1000)
    np.testing.assert_allclose(h(sched.betas)[[0, -1]], [1e-4, 0.02])
    abar_T = float(h(sched.alphas_cumprod)[-1])
    assert abar_T < 1e-4
    # KL(N(sqrt(abar) x0, 1 - abar) || N(0, 1)) for the worst data value |x0| = 1
    kl = 0.5 * (abar_T * 1.0 + (1 - abar_T) - 1 - math.log(1 - abar_T))
    assert kl < 1e-4
    assert sched.prior_kl() <= kl


@DIFFUSION
@given(st.integers(2, 2000), st.floats(1e-3, 0.2))
def test_cosine_matches_nichol_dhariwal(T, s):
    sched = NoiseSchedule.cosine(T, s=s)
    f = [math.cos(((t / T) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    betas = [min(1 - f[t + 1] / f[t], 0.999) for t in range(T)]
    np.testing.assert_allclose(h(sched.betas), betas, rtol=1e-9, atol=1e-15)
    assert h(sched.betas).max() <= 0.999


def test_scaled_linear_and_from_betas():
    sched = NoiseSchedule.scaled_linear(10, 0.0001, 0.01)
    np.testing.assert_allclose(np.sqrt(h(sched.betas)), np.linspace(0.01, 0.1, 10), rtol=1e-12)
    other = NoiseSchedule.from_betas([0.1, 0.2, 0.3])
    np.testing.assert_allclose(h(other.alphas_cumprod), [0.9, 0.72, 0.504], rtol=1e-12)


@pytest.mark.parametrize("make, words", [
    (lambda: NoiseSchedule.linear(0), ["T", ">= 1", "0"]),
    (lambda: NoiseSchedule.cosine(-3), ["T", ">= 1", "-3"]),
    (lambda: NoiseSchedule.linear(2.5), ["T", "integer", "2.5"]),
    (lambda: NoiseSchedule.linear(10, beta_end=1.5), ["beta_end", "(0, 1)", "1.5"]),
    (lambda: NoiseSchedule([0.1, 0.0, 0.2]), ["betas", "(0, 1)", "betas[1]", "0.0"]),
    (lambda: NoiseSchedule([0.1, 1.0]), ["betas", "(0, 1)", "1.0"]),
    (lambda: NoiseSchedule([]), ["betas", "1-D"]),
    (lambda: NoiseSchedule([1e-320] * 3), ["alphas_cumprod", "strictly decreasing"]),
    (lambda: NoiseSchedule.cosine(10, s=0), ["s", "(0, 1)", "0"]),
    (lambda: NoiseSchedule.from_alphas_cumprod([0.9, 0.95, 0.5]),
     ["alphas_cumprod", "strictly decreasing", "alphas_cumprod[1]", "0.95"]),
])
def test_bad_input_raises_clear_value_error(make, words):
    with pytest.raises(ValueError) as info:
        make()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_from_alphas_cumprod_keeps_alphabar_exactly():
    abar = [0.9, 0.5, 1e-20]
    sched = NoiseSchedule.from_alphas_cumprod(abar)
    assert list(h(sched.alphas_cumprod)) == abar
    np.testing.assert_allclose(h(sched.betas), [0.1, 1 - 0.5 / 0.9, 1 - 2e-20], rtol=1e-15)


def test_single_step_schedule():
    sched = NoiseSchedule([0.3])
    assert len(sched) == 1
    np.testing.assert_allclose(h(sched.posterior_log_variance_clipped), [math.log(0.3)])
