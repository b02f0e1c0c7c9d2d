"""The objectives of lesson 13: the learned variance (13.1), the bound as a training loss
(13.2), its frozen-mean hybrid, and the importance sampler over t (13.3), each against an
independent computation (brute force, quadrature, numerical integration)."""
import math
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import backend
from minidiff.diffusion import NoiseSchedule, p_mean_variance, respace, training_step
from minidiff.diffusion.resample import LossSecondMomentSampler
from minidiff.diffusion.vlb import bound_term, vlb_term_at
from minidiff.tensor import Tensor
from minidiff.gradcheck import gradcheck
from tests.test_train import TINY as TRAIN_TINY


def dev(a, dtype=np.float64):
    return backend.to_device(np.asarray(a, dtype=dtype))


def h(a):
    return backend.to_host(a.data if isinstance(a, Tensor) else a)


def images(n, c=1, size=4, seed=0):
    """x_0 on the 256-level grid in [-1, 1]."""
    return dev(np.random.default_rng(seed).integers(0, 256, (n, c, size, size)) / 127.5 - 1)


class Fixed:
    """A 'network' whose output is one parameter Tensor, whatever x_t and t."""

    def __init__(self, array):
        self.out = Tensor(dev(array), requires_grad=True)

    def __call__(self, x_t, t):
        return self.out


# ---------------------------------------------------------------- the learned variance (13.1)

@pytest.mark.parametrize("respaced", [False, True])
def test_learned_variance_interpolates_between_beta_tilde_and_beta(respaced):
    """v = -1 gives log beta~_t, v = +1 log beta_t, v = 0 their mean, with beta~ computed here
    from the betas, beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) (index 0 takes index 1's),
    for the schedule given (a respaced one has other betas)."""
    schedule = NoiseSchedule.linear(100)
    if respaced:
        schedule = respace(schedule, range(0, 100, 7))
    betas = h(schedule.betas).astype(np.float64)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    tilde = betas * (1 - abar_prev) / (1 - abar)
    tilde[0] = tilde[1]
    T = len(betas)
    t = dev(np.arange(T), np.int64)
    x_t = dev(np.zeros((T, 1, 2, 2)))
    eps = np.zeros((T, 1, 2, 2))
    for v, want in ((-1.0, np.log(tilde)), (1.0, np.log(betas)),
                    (0.0, 0.5 * (np.log(tilde) + np.log(betas)))):
        pred = dev(np.concatenate([eps, np.full_like(eps, v)], axis=1))
        out = p_mean_variance(schedule, pred, x_t, t, variance="learned", clip_x0=False)
        got = h(out["log_variance"])[:, 0, 0, 0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(h(out["variance"])[:, 0, 0, 0], np.exp(want), rtol=1e-6)
        fixed = p_mean_variance(schedule, dev(eps), x_t, t, clip_x0=False)
        np.testing.assert_allclose(h(out["mean"]), h(fixed["mean"]), atol=1e-12)


def test_learned_variance_wants_2c_channels():
    schedule = NoiseSchedule.linear(10)
    with pytest.raises(ValueError, match="2C = 2"):
        p_mean_variance(schedule, dev(np.zeros((1, 1, 2, 2))), dev(np.zeros((1, 1, 2, 2))),
                        dev([3], np.int64), variance="learned")


# ---------------------------------------------------------------- the bound term

def test_bound_kl_matches_gauss_hermite_quadrature():
    """For t >= 1 the differentiable term is KL(q || p) averaged over dimensions: compare with
    E_q[log q - log p] by 40-point Gauss-Hermite quadrature, per dimension."""
    schedule = NoiseSchedule.linear(50)
    rng = np.random.default_rng(1)
    x0, x_t = images(2, size=2), dev(rng.standard_normal((2, 1, 2, 2)))
    t = dev([5, 30], np.int64)
    mean = Tensor(dev(rng.standard_normal((2, 1, 2, 2)) * 0.3), requires_grad=True)
    log_var = Tensor(dev(rng.normal(-4, 0.5, (2, 1, 2, 2))), requires_grad=True)
    got = h(bound_term(schedule, x0, x_t, t, mean, log_var))
    from minidiff.diffusion import q_posterior
    m1, _, l1 = (h(a) for a in q_posterior(schedule, x0, x_t, t))
    nodes, weights = np.polynomial.hermite.hermgauss(40)
    want = []
    for i in range(2):
        kls = []
        for j in np.ndindex(1, 2, 2):
            mu, s1 = m1[i][j], math.exp(0.5 * l1[i].reshape(-1)[0])
            mu2, s2 = h(mean)[i][j], math.exp(0.5 * h(log_var)[i][j])
            z = mu + math.sqrt(2) * s1 * nodes
            log_q = -0.5 * ((z - mu) / s1) ** 2 - math.log(s1)
            log_p = -0.5 * ((z - mu2) / s2) ** 2 - math.log(s2)
            kls.append((weights * (log_q - log_p)).sum() / math.sqrt(math.pi))
        want.append(np.mean(kls))
    np.testing.assert_allclose(got, want, rtol=1e-8)
    assert gradcheck(lambda m, lv: bound_term(schedule, x0, x_t, t, m, lv), mean, log_var)


def test_bound_decoder_matches_math_erf_and_is_differentiable():
    """At t = 0 the term is the discretized decoder NLL (4.7): compare with the bin masses
    integrated by math.erf, and check its gradient in the mean and the log-variance."""
    schedule = NoiseSchedule.linear(50)
    rng = np.random.default_rng(2)
    x0 = images(2, size=3)
    mean = Tensor(dev(h(x0) + rng.normal(0, 0.02, (2, 1, 3, 3))), requires_grad=True)
    log_var = Tensor(dev(rng.normal(2 * math.log(0.02), 0.3, (2, 1, 3, 3))),
                     requires_grad=True)
    t = dev([0, 0], np.int64)
    got = h(bound_term(schedule, x0, x0, t, mean, log_var))

    def Phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))
    want = []
    for i in range(2):
        nll = []
        for j in np.ndindex(1, 3, 3):
            x, m, s = h(x0)[i][j], h(mean)[i][j], math.exp(0.5 * h(log_var)[i][j])
            hi = 1.0 if x > 0.999 else Phi((x + 1 / 255 - m) / s)
            lo = 0.0 if x < -0.999 else Phi((x - 1 / 255 - m) / s)
            nll.append(-math.log(hi - lo))
        want.append(np.mean(nll))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert gradcheck(lambda m, lv: bound_term(schedule, x0, x0, t, m, lv), mean, log_var)


@pytest.mark.parametrize("variance", ["fixed_small", "learned"])
def test_training_bound_equals_the_evaluation_path(variance):
    """objective=vlb's per-item loss is (L_T + T L_t) / ln 2 with L_t what ``vlb_term_at``
    (minidiff eval) reports for the same t and noise: training and evaluation agree."""
    schedule = NoiseSchedule.linear(40)
    rng = np.random.default_rng(3)
    x0 = images(4)
    channels = 2 if variance == "learned" else 1
    model = Fixed(rng.standard_normal((4, channels, 4, 4)) * 0.5)
    t, noise = dev([0, 1, 17, 39], np.int64), dev(rng.standard_normal((4, 1, 4, 4)))
    _, info = training_step(model, schedule, x0, t=t, noise=noise, objective="vlb",
                            variance=variance, details=True)
    from minidiff.diffusion import prior_term
    term = h(vlb_term_at(schedule, model, x0, t, noise=noise, variance=variance))
    want = (h(prior_term(schedule, x0)) + 40 * term) / math.log(2)
    np.testing.assert_allclose(info["per_item"], want, rtol=1e-10)


# ---------------------------------------------------------------- the hybrid's frozen mean

def test_hybrid_bound_term_reaches_the_variance_only():
    """L_hybrid's gradient in the mean channels equals L_simple's (the bound sees the mean
    detached); the variance channels get one from the bound alone.  With objective vlb the
    bound does move the mean channels (so the comparison can fail)."""
    schedule = NoiseSchedule.linear(30)
    rng = np.random.default_rng(4)
    x0 = images(3)
    out = rng.standard_normal((3, 2, 4, 4))
    t, noise = dev([0, 4, 20], np.int64), dev(rng.standard_normal((3, 1, 4, 4)))

    def grad(objective, weight):
        model = Fixed(out)
        training_step(model, schedule, x0, t=t, noise=noise, objective=objective,
                      variance="learned", vlb_weight=weight).backward()
        return h(model.out.grad)
    hybrid, simple_only = grad("hybrid", 1.0), grad("hybrid", 0.0)
    np.testing.assert_allclose(hybrid[:, :1], simple_only[:, :1], rtol=1e-12, atol=1e-15)
    assert np.abs(simple_only[:, 1:]).max() == 0
    assert np.abs(hybrid[:, 1:]).max() > 1e-6
    vlb = grad("vlb", 0.0)
    assert np.abs(vlb[:, :1]).max() > 1e-6


def test_hybrid_needs_a_learned_variance():
    with pytest.raises(ValueError, match="learned"):
        training_step(Fixed(np.zeros((1, 1, 4, 4))), NoiseSchedule.linear(10), images(1),
                      objective="hybrid")


# ---------------------------------------------------------------- the importance sampler

@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 6), batches=st.lists(st.lists(st.tuples(st.integers(0, 5),
                                                                 st.floats(0.01, 100.0)),
                                                       min_size=1, max_size=30),
                                              min_size=1, max_size=12))
def test_loss_history_matches_brute_force_deques(T, batches):
    """The ring buffers hold the last 10 losses of each t, as deques fed one item at a time."""
    sampler = LossSecondMomentSampler(T)
    queues = [deque(maxlen=10) for _ in range(T)]
    for batch in batches:
        t = np.array([k % T for k, _ in batch])
        losses = np.array([v for _, v in batch])
        sampler.update(t, losses)
        for k, v in zip(t, losses):
            queues[k].append(v)
    assert sampler.warmed_up() == all(len(q) == 10 for q in queues)
    p = sampler.probabilities()
    if sampler.warmed_up():
        root = np.array([math.sqrt(np.mean(np.square(q))) for q in queues])
        want = 0.999 * root / root.sum() + 0.001 / T
    else:
        want = np.full(T, 1.0 / T)
    np.testing.assert_allclose(p, want, rtol=1e-12)


@settings(max_examples=15, deadline=None)
@given(T=st.integers(2, 6), seed=st.integers(0, 2 ** 16))
def test_importance_weights_give_an_unbiased_estimate(T, seed):
    """E_{t~p}[T L_t / (T p_t)] = sum_t L_t (13.3): the weighted mean of 40,000 draws lies
    within 5 standard errors of the brute-force sum, and draws follow p."""
    rng = np.random.default_rng(seed)
    L = rng.uniform(0.1, 1.0, T) * 10.0 ** rng.integers(0, 3, T)
    sampler = LossSecondMomentSampler(T)
    for _ in range(10):
        sampler.update(np.arange(T), L * rng.uniform(0.5, 1.5, T))
    assert sampler.warmed_up()
    backend.manual_seed(seed)
    t, w = sampler.draw(40_000)
    t, w = backend.to_host(t), backend.to_host(w)
    p = sampler.probabilities()
    np.testing.assert_allclose(w, 1.0 / (T * p[t]), rtol=1e-12)
    values = w * T * L[t]
    assert abs(values.mean() - L.sum()) < 5 * values.std() / math.sqrt(len(values)) + 1e-9
    freq = np.bincount(t, minlength=T) / len(t)
    assert np.abs(freq - p).max() < 5 * math.sqrt(0.25 / len(t))


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 5), n=st.integers(1, 4), seed=st.integers(0, 2 ** 16))
def test_estimator_variance_by_enumeration_and_second_moment_is_best(T, n, seed):
    """(13.4) against the variance of the estimate's full distribution, enumerated: outcome
    L_t(x_i) / p_t with probability p_t / N; and p_t proportional to sqrt(mean_i L_t^2) (u = 0)
    gives no more variance than uniform or any other p drawn."""
    from minidiff.diffusion.resample import estimator_variance, second_moment_probabilities
    rng = np.random.default_rng(seed)
    terms = rng.uniform(0.01, 1.0, (n, T)) * 10.0 ** rng.integers(0, 3, T)
    for p in (None, rng.dirichlet(np.ones(T)) * 0.99 + 0.01 / T):
        q = np.full(T, 1.0 / T) if p is None else p
        values, probs = (terms / q).ravel(), np.tile(q / n, n)
        want = probs @ values ** 2 - (probs @ values) ** 2
        assert estimator_variance(terms, p) == pytest.approx(want, rel=1e-9, abs=1e-9)
    best = estimator_variance(terms, second_moment_probabilities(terms, uniform_prob=0.0))
    assert best <= estimator_variance(terms) * (1 + 1e-9) + 1e-9
    assert best <= estimator_variance(terms, rng.dirichlet(np.ones(T))) * (1 + 1e-9) + 1e-9


def test_estimator_variance_refuses_a_zero_probability():
    from minidiff.diffusion.resample import estimator_variance
    with pytest.raises(ValueError, match="p: expected 3 positive"):
        estimator_variance(np.ones((2, 3)), np.array([0.5, 0.5, 0.0]))


# ---------------------------------------------------------------- training with the objectives

# test_train's tiny U-Net on 16x16 crops, with T = 3 so that every t is drawn often
TINY = {**TRAIN_TINY, "T": 3, "batch_size": 8, "steps": 10, "train_images": 100}


@pytest.fixture(scope="module")
def digits():
    from minidiff.data.mnist import load_mnist
    return load_mnist("train")[0][:100, :, 6:22, 6:22]


def _weights(trainer):
    return {k: backend.to_host(v) for k, v in trainer.model.state_dict().items()}


def test_loss_second_moment_resume_is_exact(tmp_path, digits):
    """N steps straight = N/2, a checkpoint (with the loss history), N/2 more: identical
    weights; the sampler is past its warm-up (3 t x 10 losses, 5 steps x 8 items)."""
    from minidiff.config.presets import resolve
    from minidiff.train.trainer import Trainer
    config = resolve("claim", overrides=TINY, sets=["objective=hybrid", "variance=learned",
                                                    "t_sampler=loss-second-moment"])
    straight = Trainer(config, str(tmp_path / "a"), images=digits, log=lambda _: None)
    assert straight.run() == "done"
    assert straight.task.t_sampler.warmed_up()
    assert set(straight.terms) == {"simple", "vlb"}
    first = Trainer(config, str(tmp_path / "b"), images=digits, log=lambda _: None)
    first.run(stop_at=5)
    assert first.task.t_sampler.warmed_up()
    backend.manual_seed(999)
    second = Trainer(config, str(tmp_path / "b"), images=digits, log=lambda _: None)
    second.resume(first.last_checkpoint)
    second.run()
    assert second.losses == straight.losses
    for key, value in _weights(straight).items():
        assert (value == _weights(second)[key]).all(), key
    np.testing.assert_array_equal(second.task.t_sampler.history,
                                  straight.task.t_sampler.history)


def test_distributed_refuses_the_loss_second_moment_sampler(digits):
    from minidiff.config.checks import ConfigError
    from minidiff.config.presets import resolve
    from minidiff.train.trainer import Trainer
    config = resolve("claim", overrides=TINY, sets=["t_sampler=loss-second-moment"])
    with pytest.raises(ConfigError, match="t_sampler"):
        Trainer(config, "unused", images=digits, distributed=_Ranks())


class _Ranks:
    """What the trainer asks of its ranks before it checks the config."""
    is_main = True


def test_learned_variance_checkpoint_samples_and_evaluates(tmp_path, capsys):
    """A hybrid run's ema.npz (2C outputs) samples with DDPM and DDIM and gives bits/dim:
    both commands take the variance from its config."""
    import json

    from minidiff import commands as cli
    out = str(tmp_path / "run")
    assert cli.main(["train", "--preset", "claim", "--set", "objective=hybrid", "--set",
                     "variance=learned", "--set", "base_channels=8", "--set",
                     "channel_mults=[1,2]", "--set", "T=10", "--steps", "2", "--batch-size",
                     "4", "--train-images", "16", "--set", "sample_every=0", "--set",
                     "diag_every=0", "--set", "checkpoint_every=0", "--set", "warmup_steps=1",
                     "--set", "sample_steps=2", "--out", out]) == 0
    ckpt = f"{out}/ema.npz"
    for sampler in ("ddpm", "ddim"):
        assert cli.main(["sample", "--checkpoint", ckpt, "--sampler", sampler, "--n", "2",
                         "--steps", "3", "--out", str(tmp_path / f"{sampler}.png")]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", ckpt, "--n", "4", "--steps", "2", "--sampler",
                     "ddpm", "--bpd-images", "2", "--no-floor", "--reference-images", "16",
                     "--batch", "4", "--stats-dir", str(tmp_path / "stats"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["variance"] == "learned"
    assert math.isfinite(result["bits_per_dim"]["bpd"])


@pytest.mark.parametrize("gamma, passed", [(0.0, None), (5.0, 5.0)])
def test_min_snr_gamma_reaches_the_loss(digits, monkeypatch, gamma, passed):
    """The config's min_snr_gamma is the weighting training_step applies ((4.9)); 0 means
    unweighted L_simple, not a weight min(snr, 0) = 0 that would train nothing."""
    from minidiff.config.presets import resolve
    from minidiff.train import tasks
    from minidiff.train.trainer import Trainer
    seen = []
    real = tasks.training_step

    def spy(*args, **kwargs):
        seen.append(kwargs["min_snr_gamma"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "training_step", spy)
    config = resolve("quick", overrides=TINY, sets=[f"min_snr_gamma={gamma}"])
    trainer = Trainer(config, "unused", images=digits, log=lambda _: None)
    loss, _ = trainer.task.loss(np.arange(8))
    assert seen == [passed]
    assert float(h(loss.data)) > 0
