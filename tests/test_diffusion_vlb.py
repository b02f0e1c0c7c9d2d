"""The variational bound: the telescoping identity behind its split, the KL terms against a
Monte-Carlo estimate of the log-ratio along trajectories, the oracle model, bits per dim."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff.diffusion import (NoiseSchedule, bits_per_dim, discretized_gaussian_log_likelihood,
                                q_mean_variance, q_posterior, vlb_terms)
from tests.test_diffusion_strategies import DIFFUSION, dev, h, schedules


def _log_normal(x, mean, var):
    return -0.5 * (x - mean) ** 2 / var - 0.5 * np.log(2 * np.pi * var)


@DIFFUSION
@given(schedules(max_T=40), st.floats(-1, 1), st.integers(0, 2**31 - 1))
def test_forward_chain_telescopes_into_posterior_terms(sched, x0, seed):
    """log q(x_{1:T}|x_0) = sum_t log q(x_t|x_{t-1}) = log q(x_T|x_0) + sum_{t>=2}
    log q(x_{t-1}|x_t,x_0), pointwise on sampled trajectories (the identity that splits L)."""
    rng = np.random.default_rng(seed)
    betas, T, n = h(sched.betas), sched.num_timesteps, 8
    xs = [np.full(n, x0)]
    lhs = np.zeros(n)
    for b in betas:
        nxt = math.sqrt(1 - b) * xs[-1] + math.sqrt(b) * rng.standard_normal(n)
        lhs += _log_normal(nxt, math.sqrt(1 - b) * xs[-1], b)
        xs.append(nxt)
    x0_col = dev(np.full((n, 1), x0))
    mean, var, _ = q_mean_variance(sched, x0_col, dev(np.full(n, T - 1)))
    rhs = _log_normal(xs[T], h(mean)[:, 0], h(var)[:, 0])
    for step in range(1, T):  # index step = paper's t = step + 1: q(x_step | x_{step+1}, x_0)
        pm, pv, _ = q_posterior(sched, x0_col, dev(xs[step + 1][:, None]), dev(np.full(n, step)))
        rhs += _log_normal(xs[step], h(pm)[:, 0], h(pv)[:, 0])
    np.testing.assert_allclose(rhs, lhs, rtol=1e-7, atol=1e-6 * (1 + np.abs(lhs).max()))


def test_kl_terms_match_monte_carlo_log_ratio():
    """L_T + sum KL = E_q[log q(x_T|x0) - log p(x_T) + sum log q(x_{t-1}|x_t,x0)/p(x_{t-1}|x_t)]."""
    sched = NoiseSchedule.linear(6, 0.05, 0.4)
    model = lambda x, t: 0.5 * x.data  # noqa: E731  (a fixed, imperfect eps model)
    n, x0 = 20000, 0.5
    rng = np.random.default_rng(3)
    betas, T = h(sched.betas), 6
    abar = np.cumprod(1 - betas)
    prev = np.concatenate([[1.0], abar[:-1]])
    traj = [np.full(n, x0)]
    for b in betas:
        traj.append(math.sqrt(1 - b) * traj[-1] + math.sqrt(b) * rng.standard_normal(n))
    ratio = _log_normal(traj[T], math.sqrt(abar[-1]) * x0, 1 - abar[-1]) - _log_normal(
        traj[T], 0.0, 1.0)
    for i in range(1, T):  # index i: from x_{i+1} (array traj[i+1]) to x_i
        xt = traj[i + 1]
        pv = betas[i] * (1 - prev[i]) / (1 - abar[i])
        qm = (betas[i] * math.sqrt(prev[i]) * x0 + (1 - prev[i]) * math.sqrt(1 - betas[i]) * xt) \
            / (1 - abar[i])
        pm = (xt - betas[i] / math.sqrt(1 - abar[i]) * 0.5 * xt) / math.sqrt(1 - betas[i])
        ratio += _log_normal(traj[i], qm, pv) - _log_normal(traj[i], pm, pv)
    out = vlb_terms(sched, model, dev(np.full((4000, 1), x0)))
    bound = h(out["prior"]) + h(out["terms"])[:, 1:].sum(axis=1)
    se = math.sqrt(ratio.var() / n + bound.var() / bound.size)
    assert abs(ratio.mean() - bound.mean()) < 5 * se, (ratio.mean(), bound.mean(), se)


def test_oracle_model_has_zero_kl_and_decoder_term_from_erf():
    sched = NoiseSchedule.linear(8, 0.01, 0.3)
    x0 = np.round(np.linspace(-1, 1, 6) * 127.5) / 127.5
    x0_col = dev(x0[:, None])
    abar = np.cumprod(1 - h(sched.betas))

    def oracle(x, t):  # knows x0 (item j of a forward is image j mod N): the exact noise
        a = abar[h(t)][:, None]
        return (h(x) - np.sqrt(a) * x0[np.arange(len(a)) % len(x0), None]) / np.sqrt(1 - a)

    out = vlb_terms(sched, lambda x, t: dev(oracle(x, t)), x0_col)
    assert np.abs(h(out["terms"])[:, 1:]).max() < 1e-9
    # L_0: mean x0 exactly (posterior at index 0 returns x0), std sqrt(beta~ of step 2)
    s = math.sqrt(h(sched.posterior_variance)[1])
    want = []
    for v in x0:
        hi = 1.0 if v > 0.999 else 0.5 * (1 + math.erf((1 / 255) / (s * math.sqrt(2))))
        lo = 0.0 if v < -0.999 else 0.5 * (1 + math.erf((-1 / 255) / (s * math.sqrt(2))))
        want.append(-math.log(hi - lo))
    np.testing.assert_allclose(h(out["terms"])[:, 0], want, rtol=1e-6)
    prior = 0.5 * (abar[-1] * x0 ** 2 + (1 - abar[-1]) - 1 - np.log(1 - abar[-1]))
    np.testing.assert_allclose(h(out["prior"]), prior, rtol=1e-9)
    np.testing.assert_allclose(h(out["total"]), prior + np.array(want), rtol=1e-6)
    logp = h(discretized_gaussian_log_likelihood(x0_col, x0_col, dev(np.full((6, 1),
                                                                            math.log(s)))))
    np.testing.assert_allclose(-logp[:, 0], want, rtol=1e-6)


def test_bits_per_dim_full_and_monte_carlo_agree():
    sched = NoiseSchedule.linear(10, 0.01, 0.3)
    rng = np.random.default_rng(4)
    x0 = dev(np.round(rng.uniform(-1, 1, (64, 3)) * 127.5) / 127.5)
    model = lambda x, t: 0.8 * x.data  # noqa: E731
    full = bits_per_dim(sched, model, x0)
    terms = vlb_terms(sched, model, x0)
    assert abs(full["bpd"] - h(terms["total"]).mean() / math.log(2)) < 0.2 * full["bpd"]
    mc = bits_per_dim(sched, model, x0, num_samples=8)
    assert mc["stderr"] > 0 and full["stderr"] > 0
    assert abs(mc["bpd"] - full["bpd"]) < 5 * math.hypot(mc["stderr"], full["stderr"])
    assert h(full["per_item"]).shape == (64,)


def test_monte_carlo_bound_keeps_the_decoder_term_exact():
    """The estimator L_T + L_0 + (T-1) L_t, t ~ U{1..T-1}: unbiased (its mean over many draws
    matches the full bound) and, with L_0 much larger than the KL terms, far less spread
    than drawing t uniformly from all T indices, whose variance T^2 Var_t(terms) follows
    from the same terms matrix."""
    sched = NoiseSchedule.linear(10, 0.01, 0.3)
    rng = np.random.default_rng(5)
    x0 = dev(np.round(rng.uniform(-1, 1, (1, 3)) * 127.5) / 127.5)
    x0 = dev(np.repeat(h(x0), 4000, axis=0))           # one item, 4,000 independent draws
    model = lambda x, t: 0.8 * x.data  # noqa: E731
    terms = h(vlb_terms(sched, model, x0[:400])["terms"])
    full = h(vlb_terms(sched, model, x0[:400])["total"]).mean() / math.log(2)
    mc = bits_per_dim(sched, model, x0, num_samples=1)
    assert abs(mc["bpd"] - full) < 5 * mc["stderr"] + 0.02 * abs(full)
    T = sched.num_timesteps
    uniform_sd = math.sqrt((T ** 2 * terms.var(axis=1)).mean()) / math.log(2)
    assert mc["stderr"] * math.sqrt(len(x0)) < 0.75 * uniform_sd   # 0.51 here


@pytest.mark.parametrize("variance,n,chunk", [("fixed_small", 3, 7), ("learned", 5, 256),
                                               ("fixed_large", 1, 1)])
def test_batched_bound_equals_one_forward_per_t(float64, variance, n, chunk):
    """vlb_terms sends (image, t) pairs through the network in chunks: on a random tiny U-Net
    (float64) every term equals the plain loop over t, one forward of the N images per t,
    with the same noise draws."""
    from minidiff import backend
    from minidiff.diffusion import vlb_term_at
    from minidiff.models.unet import UNet
    sched = NoiseSchedule.linear(13, 1e-3, 0.2)
    model = UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(),
                 image_size=4, groups=4, out_channels=2 if variance == "learned" else 1).eval()
    x0 = dev(np.random.default_rng(1).integers(0, 256, (n, 1, 4, 4)) / 127.5 - 1)
    backend.manual_seed(5)
    want = np.stack([h(vlb_term_at(sched, model, x0, dev(np.full(n, step, dtype=np.int64)),
                                   variance=variance)) for step in range(13)], axis=1)
    backend.manual_seed(5)
    calls = []
    out = vlb_terms(sched, model, x0, variance=variance, chunk=chunk,
                    progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_allclose(h(out["terms"]), want, rtol=0, atol=1e-10)
    assert np.abs(want).max() > 1e-3 and want.shape == (n, 13)
    per_forward = max(chunk // n, 1) * n
    assert calls[-1] == (13 * n, 13 * n) and len(calls) == -(-13 * n // per_forward)
