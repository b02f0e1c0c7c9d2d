"""The KL autoencoder (lesson 09): the diagonal Gaussian's closed-form KL against Monte Carlo,
its NLL against the density written out and integrated numerically, the reparameterized sample's and the loss's gradients, the encoder and
decoder's shapes and gradients at a tiny size, bad shapes, and the latent scale factor."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minidiff as md
from minidiff import backend
from minidiff.models import AutoencoderConfig, AutoencoderKL, DiagonalGaussian
from minidiff.models.autoencoder import autoencoder_loss, scale_by_std
from minidiff.gradcheck import gradcheck

from tests.strategies import arrays, floats, shapes

TINY = dict(image_size=8, base_channels=4, channel_mults=(1, 2), num_res_blocks=1,
            latent_channels=2, groups=2)


def _t(a, grad=False):
    return md.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def _normal_pdf(z, mean, std):
    """The normal density from its definition (the test's own, not minidiff's)."""
    return np.exp(-((z - mean) / std) ** 2 / 2) / (std * np.sqrt(2 * np.pi))


@settings(max_examples=15)
@given(st.data())
def test_kl_closed_form_matches_monte_carlo(data):
    """(9.3) against E_q[log q(z) - log p(z)] estimated from 40,000 draws per element, with
    both densities written out independently (``_normal_pdf``)."""
    shape = data.draw(shapes(min_dims=2, max_dims=2, max_side=3))
    mean = data.draw(arrays(shape, floats(-2.0, 2.0)))
    logvar = data.draw(arrays(shape, floats(-3.0, 2.0)))
    kl = DiagonalGaussian(_t(mean), _t(logvar)).kl().numpy()
    assert kl.shape == (shape[0],)
    rng = np.random.default_rng(0)
    std = np.exp(0.5 * logvar)
    z = mean + std * rng.standard_normal((40_000, *shape))
    log_ratio = np.log(_normal_pdf(z, mean, std) / _normal_pdf(z, 0.0, 1.0))   # (draws, N, D)
    per_sample = log_ratio.sum(axis=2)
    estimate = per_sample.mean(axis=0)
    stderr = per_sample.std(axis=0) / math.sqrt(len(z))
    assert np.all(np.abs(kl - estimate) <= 5 * stderr + 1e-3), (kl, estimate, stderr)


@settings(max_examples=15)
@given(st.data())
def test_nll_is_the_normal_log_density(data):
    shape = data.draw(shapes(min_dims=1, max_dims=3))
    mean, x = (data.draw(arrays(shape, floats(-2.0, 2.0))) for _ in range(2))
    logvar = data.draw(arrays(shape, floats(-3.0, 2.0)))
    nll = DiagonalGaussian(_t(mean), _t(logvar)).nll(_t(x)).numpy()
    expected = -np.log(_normal_pdf(x, mean, np.exp(0.5 * logvar)))
    expected = expected.reshape(shape[0], -1).sum(axis=1) if len(shape) > 1 else expected
    np.testing.assert_allclose(nll, expected, rtol=1e-9, atol=1e-9)


def _trapezoid(values, grid):
    values = np.broadcast_to(values, grid.shape)
    return float(((values[1:] + values[:-1]) / 2 * np.diff(grid)).sum())


def test_exp_of_minus_nll_is_a_density_with_the_right_moments():
    """Integrated numerically over a fine grid: total mass 1, mean mu, variance sigma^2."""
    grid = np.linspace(-30.0, 30.0, 60_001)
    for mu, logvar in ((0.0, 0.0), (1.3, -1.0), (-2.0, 1.5)):
        q = DiagonalGaussian(_t(np.full(grid.shape, mu)), _t(np.full(grid.shape, logvar)))
        density = np.exp(-q.nll(_t(grid)).numpy())
        mass, mean, var = (_trapezoid(f * density, grid) for f in (1.0, grid, (grid - mu) ** 2))
        assert (mass, mean, var) == pytest.approx((1.0, mu, math.exp(logvar)), abs=1e-5)


def test_sample_moments_mode_and_clamping():
    mean, logvar = np.full((4000, 3), 1.5), np.full((4000, 3), math.log(0.25))
    q = DiagonalGaussian(_t(mean), _t(logvar))
    z = q.sample().numpy()
    assert abs(z.mean() - 1.5) < 0.02 and abs(z.std() - 0.5) < 0.02
    assert (q.mode().numpy() == mean).all()
    clamped = DiagonalGaussian(_t([[0.0, 0.0]]), _t([[-100.0, 100.0]]))
    np.testing.assert_allclose(clamped.logvar.numpy(), [[-30.0, 20.0]])
    assert np.isfinite(clamped.kl().numpy()).all()
    with pytest.raises(ValueError, match="same shape"):
        DiagonalGaussian(_t([[0.0]]), _t([[0.0, 1.0]]))


@given(data=st.data())
def test_reparameterized_sample_gradient(data):
    shape = data.draw(shapes(min_dims=2, max_dims=3))
    mean = _t(data.draw(arrays(shape)), grad=True)
    logvar = _t(data.draw(arrays(shape, floats(-3.0, 2.0))), grad=True)
    noise = backend.to_device(data.draw(arrays(shape)))
    gradcheck(lambda m, lv: DiagonalGaussian(m, lv).sample(noise), mean, logvar)
    gradcheck(lambda m, lv: DiagonalGaussian(m, lv).kl(), mean, logvar)
    gradcheck(lambda m, lv: DiagonalGaussian(m, lv).nll(noise), mean, logvar)


@pytest.mark.parametrize("recon", ["l1", "l2"])
def test_loss_gradient_wrt_mean_and_logvar(recon, float64):
    """The whole objective (9.5) through the reparameterized sample, with x kept away from
    z so that |.| has no kink nearby."""
    rng = np.random.default_rng(1)
    mean = _t(rng.normal(size=(2, 3, 2, 2)), grad=True)
    logvar = _t(rng.uniform(-2, 1, size=(2, 3, 2, 2)), grad=True)
    noise = backend.to_device(rng.normal(size=(2, 3, 2, 2)))
    x = backend.to_device(np.where(rng.random((2, 3, 2, 2)) < 0.5, -12.0, 12.0))

    def loss(m, lv):
        q = DiagonalGaussian(m, lv)
        return autoencoder_loss(x, q.sample(noise), q, kl_weight=0.3, recon=recon)[0]
    gradcheck(loss, mean, logvar)


def test_loss_terms_are_what_they_say():
    x = backend.to_device(np.zeros((2, 1, 4, 4)))
    reconstruction = np.full((2, 1, 4, 4), 0.5)
    q = DiagonalGaussian(_t(np.ones((2, 2, 1, 1))), _t(np.zeros((2, 2, 1, 1))))
    loss, terms = autoencoder_loss(x, _t(reconstruction), q, kl_weight=0.1, recon="l2")
    # rec: 0.25 per pixel; KL: 1/2 * 1 per latent dimension, 1 nat per image over 16 pixels
    assert terms == pytest.approx({"rec": 0.25, "kl": 0.5})
    assert loss.item() == pytest.approx(0.25 + 0.1 * 1.0 / 16)
    with pytest.raises(ValueError, match="recon"):
        autoencoder_loss(x, _t(reconstruction), q, kl_weight=0.1, recon="l3")


def test_default_shapes():
    model = AutoencoderKL()
    assert model.latent_shape == (4, 7, 7)
    x = md.Tensor(backend.rand(2, 1, 28, 28) * 2 - 1)
    posterior = model.encode(x)
    assert posterior.mean.shape == posterior.logvar.shape == (2, 4, 7, 7)
    reconstruction, _ = model(x)
    assert reconstruction.shape == (2, 1, 28, 28)
    assert model.decode(posterior.mode()).shape == (2, 1, 28, 28)
    assert AutoencoderKL(latent_channels=2).latent_shape == (2, 7, 7)


def test_bad_shapes_are_named():
    model = AutoencoderKL(**TINY)
    with pytest.raises(ValueError, match=r"x must be \(N, 1, 8, 8\), got \(2, 1, 6, 6\)"):
        model.encode(backend.randn(2, 1, 6, 6))
    with pytest.raises(ValueError, match=r"z must be \(N, 2, 4, 4\), got \(2, 3, 4, 4\)"):
        model.decode(backend.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="not divisible"):
        AutoencoderKL(image_size=10, channel_mults=(1, 2, 2))


def test_config_round_trip():
    config = AutoencoderConfig(**TINY)
    assert AutoencoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown keys"):
        AutoencoderConfig.from_dict({"latent_channel": 3})


def test_encoder_and_decoder_gradients_tiny(float64):
    """Finite differences through E then D: the input, the first and the last weights."""
    model = AutoencoderKL(**TINY)
    x = _t(np.random.default_rng(0).uniform(-1, 1, (1, 1, 8, 8)), grad=True)
    noise = backend.to_device(np.random.default_rng(1).normal(size=(1, 2, 4, 4)))

    def run(x, *_):
        q = model.encode(x)
        return model.decode(q.sample(noise))
    gradcheck(run, x, model.encoder.conv_in.weight, model.decoder.conv_out.bias, atol=1e-6)


class _Known:
    """An 'encoder' with a known latent law: z = 3 x + 2 eps."""

    def encode(self, x):
        logvar = backend.xp().full(x.shape, math.log(4.0))
        return DiagonalGaussian(md.Tensor(3.0 * x), md.Tensor(logvar))


def test_scale_factor_on_a_known_case(float64):
    x = np.random.default_rng(0).choice([-1.0, 1.0], size=(3000, 1, 4, 4))
    # Var z = 9 Var x + 4 = 13 (x = +-1 with mean ~0), so scale = 1 / sqrt(13)
    scale = scale_by_std(_Known(), x, batch=700)
    expected = 1.0 / math.sqrt(9.0 * x.var() + 4.0)
    assert scale == pytest.approx(expected, rel=5e-3)
    assert abs(scale - 1.0 / math.sqrt(9.0)) > 0.05   # the noise of q counts, not just the means
