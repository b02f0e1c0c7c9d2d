"""Inpainting by replacement (RePaint without resampling, samplers ``known=``): the known
coordinates end exactly at the known values, a mask of zeros returns the original, a mask of
ones is the plain sampler, one DDPM run against a loop written here from (2.4), (3.3)-(3.4),
and the Gaussian-mixture oracle (8.2) filling a coordinate to fit the known one."""
import numpy as np
import pytest

from minidiff import backend
from minidiff.diffusion import NoiseSchedule, ddim_sample, ddpm_sample
from minidiff.diffusion.oracles import GaussianMixture
from tests.test_diffusion_strategies import dev, h


def _linear_model(x, t):
    """Any deterministic network will do for the exact identities."""
    return 0.3 * x + 0.01 * (backend.array_of(t)[:, None] % 7)


def _problem(n=6, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x0_known = rng.uniform(-1, 1, (n, d))
    mask = (rng.uniform(size=(n, d)) < 0.5).astype(float)
    return dev(x0_known), dev(mask)


SAMPLERS = [
    ("ddpm", lambda sched, shape, **kw: ddpm_sample(_linear_model, sched, shape, **kw)),
    ("ddpm-respaced", lambda sched, shape, **kw: ddpm_sample(_linear_model, sched, shape,
                                                             steps=7, **kw)),
    ("ddim", lambda sched, shape, **kw: ddim_sample(_linear_model, sched, shape, steps=9, **kw)),
    ("ddim-eta1", lambda sched, shape, **kw: ddim_sample(_linear_model, sched, shape, steps=9,
                                                         eta=1.0, **kw)),
]


@pytest.mark.parametrize("name,run", SAMPLERS, ids=[s[0] for s in SAMPLERS])
def test_known_coordinates_end_at_the_known_values(name, run):
    sched = NoiseSchedule.linear(30, 1e-3, 0.2)
    x0_known, mask = _problem()
    backend.manual_seed(3)
    x = h(run(sched, (6, 5), known=(x0_known, mask), clip_x0=False))
    keep = h(mask) == 0
    assert np.array_equal(x[keep], h(x0_known).astype(x.dtype)[keep])     # exactly
    assert np.abs(x[~keep] - h(x0_known)[~keep]).min() > 0                # the rest is sampled
    # a mask of zeros (everything known) returns the original, bit for bit
    backend.manual_seed(3)
    x = h(run(sched, (6, 5), known=(x0_known, 0 * mask)))
    assert np.array_equal(x, h(x0_known).astype(x.dtype))


def test_a_mask_of_ones_is_the_plain_sampler_bit_for_bit():
    sched = NoiseSchedule.cosine(40)
    x0_known, mask = _problem()
    for kwargs in ({"steps": 9}, {"steps": 40}):
        backend.manual_seed(4)
        plain = h(ddim_sample(_linear_model, sched, (6, 5), **kwargs))
        backend.manual_seed(4)
        filled = h(ddim_sample(_linear_model, sched, (6, 5), known=(x0_known, 1 + 0 * mask),
                               **kwargs))
        assert plain.dtype == filled.dtype and np.array_equal(plain, filled)
    # DDPM draws eps' after each step's z: the same x_T and z, more draws after them
    backend.manual_seed(4)
    plain = h(ddpm_sample(_linear_model, sched, (6, 5), steps=1))
    backend.manual_seed(4)
    filled = h(ddpm_sample(_linear_model, sched, (6, 5), steps=1, known=(x0_known, 1 + 0 * mask)))
    assert np.array_equal(plain, filled)


def test_ddpm_replacement_against_a_loop_written_from_the_formulas(float64):
    """Algorithm 2 on a respaced schedule with (11.8) after each step, written here with the
    same draws in the same order (x_T; then per step z, then eps')."""
    sched = NoiseSchedule.linear(50, 1e-3, 0.1)
    kept = [0, 8, 16, 24, 33, 41, 49]                    # space_timesteps(50, 7)
    x0_known, mask = _problem(seed=1)
    backend.manual_seed(7)
    got = h(ddpm_sample(_linear_model, sched, (6, 5), steps=7, known=(x0_known, mask),
                        clip_x0=False))

    abar = h(sched.alphas_cumprod)[kept]
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta = 1 - abar / abar_prev
    x0k, m = h(x0_known), h(mask)
    backend.manual_seed(7)
    x = h(backend.randn(6, 5, dtype="float64"))
    for i in reversed(range(len(kept))):
        eps = h(_linear_model(dev(x), dev(np.full(6, kept[i]))))
        x0_hat = (x - np.sqrt(1 - abar[i]) * eps) / np.sqrt(abar[i])
        mean = (np.sqrt(abar_prev[i]) * beta[i] / (1 - abar[i]) * x0_hat
                + np.sqrt(1 - beta[i]) * (1 - abar_prev[i]) / (1 - abar[i]) * x)
        if i > 0:
            var = beta[i] * (1 - abar_prev[i]) / (1 - abar[i])
            x = mean + np.sqrt(var) * h(backend.randn(6, 5, dtype="float64"))
            noised = (np.sqrt(abar_prev[i]) * x0k
                      + np.sqrt(1 - abar_prev[i]) * h(backend.randn(6, 5, dtype="float64")))
        else:
            x, noised = mean, x0k
        x = m * x + (1 - m) * noised
    np.testing.assert_allclose(got, x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_the_oracle_fills_a_coordinate_to_fit_the_known_one(float64, sampler):
    """Data: x = (s, s) + 0.1 noise with s = +-1 equally likely.  Knowing x[0] = s, the exact
    network fills x[1] near s (the other component has posterior weight ~ e^-200)."""
    sched = NoiseSchedule.linear(200, 1e-4, 0.05)
    mixture = GaussianMixture([[1.0, 1.0], [-1.0, -1.0]], [0.1, 0.1])
    n = 400
    signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    x0_known = dev(np.stack([signs, np.zeros(n)], axis=1))
    mask = dev(np.tile([0.0, 1.0], (n, 1)))
    backend.manual_seed(11)
    run = ddpm_sample if sampler == "ddpm" else ddim_sample
    x = h(run(mixture.model(sched), sched, (n, 2), known=(x0_known, mask), clip_x0=False,
              **({"steps": 50} if sampler == "ddim" else {})))
    assert np.array_equal(x[:, 0], signs)
    agree = np.mean(np.sign(x[:, 1]) == signs)
    assert agree > 0.95, agree
    # without the known coordinate, half the fills disagree with the sign (a test that can fail)
    backend.manual_seed(11)
    free = h(run(mixture.model(sched), sched, (n, 2), clip_x0=False,
                 **({"steps": 50} if sampler == "ddim" else {})))
    assert 0.35 < np.mean(np.sign(free[:, 1]) == signs) < 0.65
