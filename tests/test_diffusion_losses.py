"""Losses: L_simple (value, gradient, targets, Min-SNR), the Gaussian KL against numerical
integration, erfc against the standard library, the discretized decoder's normalization."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidiff
from minidiff.diffusion import (NoiseSchedule, discretized_gaussian_log_likelihood, erfc,
                                loss_simple, min_snr_weight, normal_cdf, normal_kl,
                                predict_v, training_step)
from tests.test_diffusion_strategies import DIFFUSION, dev, h

trapezoid = getattr(np, "trapezoid", None) or np.trapz  # NumPy 2 renamed trapz


def test_erfc_relative_error_below_documented_bound():
    x = np.linspace(-9, 9, 3601)
    want = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(h(erfc(dev(x))) / want - 1)) < 1.2e-7
    z = np.linspace(-8, 8, 321)
    phi = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in z])
    assert np.max(np.abs(h(normal_cdf(dev(z))) / phi - 1)) < 1.2e-7


@DIFFUSION
@given(st.floats(-3, 3), st.floats(-3, 2), st.floats(-3, 3), st.floats(-3, 2))
def test_normal_kl_nonnegative_and_matches_numeric_integral(m1, l1, m2, l2):
    kl = h(normal_kl(dev(m1), dev(l1), dev(m2), dev(l2))).item()
    assert kl >= -1e-12
    assert abs(h(normal_kl(dev(m1), dev(l1), dev(m1), dev(l1))).item()) < 1e-12
    s1 = math.exp(0.5 * l1)
    x = np.linspace(m1 - 12 * s1, m1 + 12 * s1, 200001)
    logp = -0.5 * (x - m1) ** 2 / math.exp(l1) - 0.5 * (math.log(2 * math.pi) + l1)
    logq = -0.5 * (x - m2) ** 2 / math.exp(l2) - 0.5 * (math.log(2 * math.pi) + l2)
    numeric = trapezoid(np.exp(logp) * (logp - logq), x)
    np.testing.assert_allclose(kl, numeric, rtol=1e-5, atol=1e-7)


@DIFFUSION
@given(st.floats(-1.5, 1.5), st.floats(-7, 1))
def test_discretized_likelihood_sums_to_one_over_256_bins(mean, log_scale):
    x = np.linspace(-1, 1, 256)
    logp = h(discretized_gaussian_log_likelihood(dev(x), dev(np.full(256, mean)),
                                                 dev(np.full(256, log_scale))))
    assert (logp <= 1e-12).all()
    np.testing.assert_allclose(np.exp(logp).sum(), 1.0, atol=1e-6)
    # an interior bin against the standard library's erf
    i = 100
    s = math.exp(log_scale)
    mass = 0.5 * (math.erf((x[i] + 1 / 255 - mean) / (s * math.sqrt(2)))
                  - math.erf((x[i] - 1 / 255 - mean) / (s * math.sqrt(2))))
    if mass > 1e-6:
        np.testing.assert_allclose(np.exp(logp[i]), mass, rtol=1e-5, atol=1e-9)


def test_loss_simple_value_and_gradient(float64):
    rng = np.random.default_rng(0)
    pred_data, eps = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2))
    pred = minidiff.tensor(pred_data, requires_grad=True)
    loss = loss_simple(pred, dev(eps))
    assert isinstance(loss, minidiff.Tensor) and loss.shape == ()
    np.testing.assert_allclose(loss.item(), ((pred_data - eps) ** 2).mean())
    loss.backward()
    np.testing.assert_allclose(h(pred.grad), 2 * (pred_data - eps) / pred_data.size)
    with pytest.raises(ValueError, match="target_type"):
        loss_simple(pred, dev(eps), target_type="score")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        loss_simple(pred, dev(eps), min_snr_gamma=5.0)


def test_loss_simple_keeps_a_float32_prediction_float32():
    pred = minidiff.tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    loss = loss_simple(pred, dev(np.zeros((2, 3))))
    assert loss.dtype == np.float32
    loss.backward()
    assert pred.grad.dtype == np.float32


def test_min_snr_weights():
    sched = NoiseSchedule.linear(100)
    t = np.array([0, 50, 99])
    snr = np.cumprod(1 - np.linspace(1e-4, 0.02, 100))
    snr = (snr / (1 - snr))[t]
    like = dev(np.zeros((3, 2)))
    np.testing.assert_allclose(h(min_snr_weight(sched, dev(t), "eps", 5.0, like)),
                               np.minimum(snr, 5) / snr)
    np.testing.assert_allclose(h(min_snr_weight(sched, dev(t), "x0", 5.0, like)),
                               np.minimum(snr, 5))
    np.testing.assert_allclose(h(min_snr_weight(sched, dev(t), "v", 5.0, like)),
                               np.minimum(snr, 5) / (snr + 1))
    rng = np.random.default_rng(1)
    pred, eps = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    loss = loss_simple(minidiff.tensor(pred), dev(eps), t=dev(t), schedule=sched,
                       min_snr_gamma=5.0)
    want = (((pred - eps) ** 2).mean(axis=1) * np.minimum(snr, 5) / snr).mean()
    np.testing.assert_allclose(loss.item(), want, rtol=1e-6)


@pytest.mark.parametrize("target_type", ["eps", "x0", "v"])
def test_training_step_is_algorithm_1(float64, target_type):
    sched = NoiseSchedule.linear(20)
    rng = np.random.default_rng(2)
    x0, noise = rng.uniform(-1, 1, (5, 4)), rng.standard_normal((5, 4))
    t = np.array([0, 3, 7, 12, 19])
    w = minidiff.tensor(np.array([0.5]), requires_grad=True)

    def model(x_t, t_):
        assert isinstance(x_t, minidiff.Tensor)
        return x_t * w

    loss = training_step(model, sched, dev(x0), target_type=target_type, t=dev(t),
                         noise=dev(noise))
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 20))[t][:, None]
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
    target = {"eps": noise, "x0": x0, "v": np.sqrt(abar) * noise - np.sqrt(1 - abar) * x0}
    np.testing.assert_allclose(loss.item(), ((0.5 * x_t - target[target_type]) ** 2).mean())
    loss.backward()
    np.testing.assert_allclose(h(w.grad), [(2 * (0.5 * x_t - target[target_type]) * x_t).mean()])
    np.testing.assert_allclose(h(predict_v(sched, dev(x0), dev(t), dev(noise))), target["v"])


def test_training_step_draws_t_and_noise():
    sched = NoiseSchedule.linear(50)
    seen = []
    loss = training_step(lambda x, t: seen.append(h(t)) or x * 0.0, sched,
                         dev(np.zeros((64, 2), dtype=np.float32)))
    assert loss.shape == () and seen[0].min() >= 0 and seen[0].max() < 50
    assert len(np.unique(seen[0])) > 10
