"""Respacing, DDPM (Algorithm 2) and DDIM: respaced alphabar, DDIM(eta=1) = DDPM step,
determinism and invertibility of DDIM(eta=0), an oracle data set of one point."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff import backend
from minidiff.diffusion import (NoiseSchedule, ddim_invert, ddim_sample, ddim_step, ddpm_sample,
                                p_mean_variance, respace, space_timesteps)
from tests.test_diffusion_strategies import DIFFUSION, dev, h, schedules


@DIFFUSION
@given(schedules(), st.data())
def test_respaced_schedule_reproduces_alphabar_at_kept_steps(sched, data):
    T = sched.num_timesteps
    kept = sorted(data.draw(st.sets(st.integers(0, T - 1), min_size=1, max_size=T)))
    new = respace(sched, kept)
    abar = h(sched.alphas_cumprod)
    np.testing.assert_allclose(h(new.alphas_cumprod), abar[kept], rtol=1e-12)
    assert list(h(new.timestep_map)) == kept
    # and the new betas are not the old ones indexed at the kept steps (unless contiguous)
    old = np.concatenate([[1.0], abar])
    idx = np.array(kept)
    prev = np.concatenate([[0], idx[:-1] + 1])
    np.testing.assert_allclose(h(new.betas), 1 - old[idx + 1] / old[prev], rtol=1e-9)


def test_space_timesteps():
    assert space_timesteps(1000, 1) == [999]
    assert space_timesteps(10, 10) == list(range(10))
    kept = space_timesteps(1000, 50)
    assert len(kept) == 50 and kept[0] == 0 and kept[-1] == 999
    with pytest.raises(ValueError, match="steps"):
        space_timesteps(10, 11)
    with pytest.raises(ValueError, match="use_timesteps"):
        respace(NoiseSchedule.linear(10), [10])


@DIFFUSION
@given(schedules(max_T=100), st.data(), st.integers(0, 2**31 - 1))
def test_ddim_eta_one_step_is_ddpm_step(sched, data, seed):
    step = data.draw(st.integers(1, sched.num_timesteps - 1))
    rng = np.random.default_rng(seed)
    x_t, eps = dev(rng.standard_normal((3, 4))), dev(rng.standard_normal((3, 4)))
    _, mean, var = ddim_step(sched, eps, x_t, step, step - 1, eta=1.0, noise=x_t)
    ddpm = p_mean_variance(sched, eps, x_t, dev(np.full(3, step)), clip_x0=False)
    np.testing.assert_allclose(h(mean), h(ddpm["mean"]), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(var, h(ddpm["variance"])[0, 0], rtol=1e-9)


def _gaussian_eps_model(sched, data_var):
    """The exact E[eps | x_t] for data ~ N(0, data_var): sqrt(1-a) x_t / (a s^2 + 1 - a)."""
    abar = h(sched.alphas_cumprod)

    def model(x, t):
        a = abar[h(t)][:, None]
        return dev(h(x) * np.sqrt(1 - a) / (a * data_var + 1 - a))
    return model


def test_ddim_eta_zero_is_deterministic_and_invertible(float64):
    sched = NoiseSchedule.cosine(1000)
    model = _gaussian_eps_model(sched, 0.25)
    x0 = dev(np.linspace(-1, 1, 7)[:, None] * 0.5)
    errors = []
    for steps in (20, 100):
        x_T = ddim_invert(model, sched, x0, steps=steps)
        backend.manual_seed(1)
        a = ddim_sample(model, sched, (7, 1), steps=steps, noise=x_T, clip_x0=False)
        backend.manual_seed(2)
        b = ddim_sample(model, sched, (7, 1), steps=steps, noise=x_T, clip_x0=False)
        np.testing.assert_array_equal(h(a), h(b))
        errors.append(np.abs(h(a) - h(x0)).max())
    assert errors[1] < 0.05 and errors[1] < errors[0] / 2, errors


def test_one_point_data_set_is_recovered_exactly(float64):
    """With the oracle noise of a data set of one point c, every sampler ends at c."""
    sched = NoiseSchedule.linear(50, 1e-3, 0.1)
    c = 0.4
    abar = h(sched.alphas_cumprod)

    def oracle(x, t):
        a = abar[h(t)][:, None]
        return dev((h(x) - np.sqrt(a) * c) / np.sqrt(1 - a))

    for sample in (lambda: ddpm_sample(oracle, sched, (5, 2)),
                   lambda: ddpm_sample(oracle, sched, (5, 2), steps=7),
                   lambda: ddim_sample(oracle, sched, (5, 2), steps=7, eta=0.0),
                   lambda: ddim_sample(oracle, sched, (5, 2), steps=7, eta=1.0)):
        np.testing.assert_allclose(h(sample()), c, atol=1e-9)


def test_ddpm_last_step_returns_the_mean_and_reports_progress(float64):
    sched = NoiseSchedule.linear(6, 0.01, 0.3)
    model = lambda x, t: 0.3 * x  # noqa: E731  (Tensor in, Tensor out)
    calls = []
    x, frames = ddpm_sample(model, sched, (4, 3), progress=lambda i, n: calls.append((i, n)),
                            return_frames=True)
    assert calls == [(i, 6) for i in range(1, 7)]
    assert len(frames) == 7
    last = p_mean_variance(sched, dev(0.3 * h(frames[-2])), frames[-2], dev(np.zeros(4, int)))
    np.testing.assert_allclose(h(x), h(last["mean"]))
    calls.clear()
    x, frames = ddim_sample(model, sched, (4, 3), steps=3, return_frames=True,
                            progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)] and len(frames) == 4


def test_ddim_on_gaussian_data_gets_the_variance_right(float64):
    sched = NoiseSchedule.linear(1000)
    model = _gaussian_eps_model(sched, 0.25)
    backend.manual_seed(5)
    n = 4000
    x = h(ddim_sample(model, sched, (n, 1), steps=100, eta=0.0, clip_x0=False))
    # sampling error of a standard deviation: sd / sqrt(2n); allow 5 of them plus 1% for steps
    assert abs(x.std() - 0.5) < 5 * 0.5 / math.sqrt(2 * n) + 0.005


def test_samplers_follow_the_default_dtype():
    sched = NoiseSchedule.linear(4)
    model = lambda x, t: 0.1 * x  # noqa: E731
    for sample in (ddpm_sample, ddim_sample):
        out = sample(model, sched, (2, 3))
        assert out.dtype == np.float32 and out.shape == (2, 3)
        assert backend.backend_name_of(out) == backend.get_backend()
