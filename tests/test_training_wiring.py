"""Training wiring against independent expectations (lesson 07):

* ``training_step`` (Algorithm 1): the timesteps are uniform on [0, T) (a chi-square test and
  full coverage), the noise has mean 0 and variance 1 and is the noise inside x_t, and the loss
  on a fixed batch equals the loss written out here for each target (eps, x_0, v; Min-SNR);
* the trainer: the EMA after N steps is the EMA formula applied to the recorded raw weights,
  the learning rate at each step is warm-up + cosine written out here, the exported ``ema.npz``
  holds that EMA (not the raw weights), clipping acts above the threshold and not below, and the
  network is trained on the configured target.

Tolerances: chi-square with k - 1 degrees of freedom, accepted below k - 1 + 5 sqrt(2 (k - 1))
(its mean plus 5 standard deviations); a mean of n unit-variance draws within 5/sqrt(n); a
variance within 5 sqrt(2/n).
"""
import math

import numpy as np
import pytest

from minidiff import backend
from minidiff.diffusion import NoiseSchedule, training_step
from minidiff.tensor import Tensor
from minidiff.train import tasks as tasks_module
from minidiff.checkpoint import load_checkpoint
from minidiff.config.presets import resolve
from minidiff.train.trainer import Trainer
from tests.test_diffusion_strategies import dev, h


class Recorder:
    """A 'network' that records what it is called with and answers ``answer(x_t, t)``."""

    def __init__(self, answer=lambda x, t: 0.0 * x):
        self.answer, self.calls = answer, []

    def __call__(self, x_t, t):
        self.calls.append((h(x_t), h(t)))
        return self.answer(x_t, t)


def test_training_timesteps_are_uniform_over_all_steps():
    T, n = 50, 20_000
    sched = NoiseSchedule.linear(T)
    model = Recorder()
    training_step(model, sched, dev(np.zeros((n, 1), np.float32)))
    t = model.calls[0][1]
    assert t.min() == 0 and t.max() == T - 1          # both ends reached
    counts = np.bincount(t, minlength=T)
    assert len(counts) == T and counts.min() > 0
    expected = n / T
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < (T - 1) + 5 * math.sqrt(2 * (T - 1)), chi2


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_training_noise_is_standard_and_is_the_noise_in_x_t(target, float64):
    """x_t recorded by the model gives back the noise, eps = (x_t - sqrt(abar) x0) /
    sqrt(1 - abar) (2.4): mean 0, variance 1; and with the model answering x_t itself, the loss
    is the MSE between x_t and the target built from that same noise."""
    T, n = 20, 4000
    sched = NoiseSchedule.linear(T, 0.01, 0.3)
    abar = np.cumprod(1 - h(sched.betas))
    x0 = np.random.default_rng(0).uniform(-1, 1, (n, 3))
    model = Recorder(answer=lambda x, t: x)
    loss = float(h(training_step(model, sched, dev(x0), target_type=target)))
    x_t, t = model.calls[0]
    a = abar[t][:, None]
    eps = (x_t - np.sqrt(a) * x0) / np.sqrt(1 - a)
    assert abs(eps.mean()) < 5 / math.sqrt(eps.size), eps.mean()
    assert abs(eps.var() - 1) < 5 * math.sqrt(2 / eps.size), eps.var()
    want_target = {"eps": eps, "x0": x0, "v": np.sqrt(a) * eps - np.sqrt(1 - a) * x0}[target]
    assert loss == pytest.approx(((x_t - want_target) ** 2).mean(), rel=1e-9)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [None, 2.0])
def test_training_loss_on_a_fixed_batch(target, gamma, float64):
    """loss = mean_i w_i mean_d (f(x_t, t) - target)^2 with everything fixed, (4.6) and (4.9):
    w = min(snr, gamma) / snr (eps), min(snr, gamma) (x_0), min(snr, gamma) / (snr + 1) (v)."""
    sched = NoiseSchedule.cosine(30)
    rng = np.random.default_rng(1)
    x0, noise = rng.uniform(-1, 1, (5, 2, 3)), rng.standard_normal((5, 2, 3))
    t = np.array([0, 7, 14, 21, 29])
    abar = np.cumprod(1 - h(sched.betas))[t][:, None, None]
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
    prediction = 0.5 * x_t + 0.01 * t[:, None, None]

    def net(x, steps):
        return Tensor(0.5 * x.data + 0.01 * steps[:, None, None])   # steps: dev(t) below

    want_target = {"eps": noise, "x0": x0, "v": np.sqrt(abar) * noise - np.sqrt(1 - abar) * x0}
    per_item = ((prediction - want_target[target]) ** 2).mean(axis=(1, 2))
    if gamma is not None:
        snr = abar[:, 0, 0] / (1 - abar[:, 0, 0])
        per_item = per_item * {"eps": np.minimum(snr, gamma) / snr, "x0": np.minimum(snr, gamma),
                               "v": np.minimum(snr, gamma) / (snr + 1)}[target]
    loss = training_step(net, sched, dev(x0), target_type=target, min_snr_gamma=gamma,
                         t=dev(t), noise=dev(noise))
    assert float(h(loss)) == pytest.approx(per_item.mean(), rel=1e-12)


# ------------------------------------------------------------------ the trainer

TINY = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [], "T": 50, "batch_size": 4, "image_size": 16, "steps": 6,
        "warmup_steps": 2, "train_images": 40, "log_every": 0, "sample_every": 0,
        "checkpoint_every": 0, "diag_every": 0, "sample_count": 4, "sample_steps": 3,
        "ema_decay": 0.8, "lr": 1e-2, "min_lr": 1e-3, "grad_clip": 0.0, "prediction": "eps"}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 1, 16, 16)).astype(np.uint8)


def _raw(trainer):
    return [h(p.data).astype(np.float64) for p in trainer.model.parameters()]


def test_trainer_ema_lr_and_export(tmp_path, images):
    """Run 6 steps recording the raw weights after each and the lr each optimizer step used;
    then: EMA = decay-weighted average of the recorded weights (from the initial ones), lr =
    warm-up then cosine, and ema.npz holds that EMA, which is not the raw weights."""
    config = resolve("quick", overrides=TINY)
    trainer = Trainer(config, str(tmp_path), images=images, log=lambda _: None)
    history, lrs = [_raw(trainer)], []
    step, optimizer_step = trainer.train_step, trainer.optimizer.step

    def recording_step():
        value = step()
        history.append(_raw(trainer))
        return value

    def recording_optimizer_step():
        lrs.append(trainer.optimizer.lr)
        optimizer_step()

    trainer.train_step = recording_step
    trainer.optimizer.step = recording_optimizer_step
    assert trainer.run() == "done"
    steps, warm, base, low, decay = 6, 2, TINY["lr"], TINY["min_lr"], TINY["ema_decay"]

    want_lr = [base * (k + 1) / warm if k < warm else
               low + (base - low) * 0.5 * (1 + math.cos(math.pi * (k - warm) / (steps - warm)))
               for k in range(steps)]
    np.testing.assert_allclose(lrs, want_lr, rtol=1e-12)

    ema = [w.copy() for w in history[0]]
    for weights in history[1:]:
        ema = [decay * e + (1 - decay) * w for e, w in zip(ema, weights)]
    got = [h(s) for s in trainer.ema.shadow]
    exported = load_checkpoint(tmp_path / "ema.npz")
    names = list(trainer.model.state_dict())
    assert not any(k.startswith("model.") for k in exported)
    gap = max(np.abs(e - w).max() for e, w in zip(ema, history[-1]))
    assert gap > 1e-4                                # EMA and raw weights are distinguishable
    for i, name in enumerate(names):
        np.testing.assert_allclose(got[i], ema[i], rtol=1e-4, atol=1e-6 * gap)
        np.testing.assert_allclose(exported[f"ema.{name}"], ema[i], rtol=1e-4, atol=1e-6 * gap)


def _step_grad_norms(images, grad_clip, tmp_path):
    """The global gradient norm the optimizer sees at each of 2 steps, with ``grad_clip``."""
    config = resolve("quick", overrides={**TINY, "grad_clip": grad_clip, "steps": 2})
    trainer = Trainer(config, str(tmp_path), images=images, log=lambda _: None)
    norms, optimizer_step = [], trainer.optimizer.step

    def recording_optimizer_step():
        norms.append(math.sqrt(sum(float((h(p.grad).astype(np.float64) ** 2).sum())
                                   for p in trainer.model.parameters() if p.grad is not None)))
        optimizer_step()

    trainer.optimizer.step = recording_optimizer_step
    for _ in range(2):
        trainer.train_step()
    return norms


def test_gradient_clipping_acts_above_the_threshold_only(tmp_path, images):
    free = _step_grad_norms(images, 0.0, tmp_path / "a")           # clipping off
    above = _step_grad_norms(images, 1e6, tmp_path / "b")          # threshold far above
    np.testing.assert_allclose(above, free, rtol=1e-6)
    threshold = 0.5 * min(free)
    clipped = _step_grad_norms(images, threshold, tmp_path / "c")
    np.testing.assert_allclose(clipped, threshold, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_trainer_trains_the_configured_target(tmp_path, images, monkeypatch, prediction):
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("target_type", "eps"))
        return training_step(*args, **kwargs)

    monkeypatch.setattr(tasks_module, "training_step", spy)
    config = resolve("quick", overrides={**TINY, "prediction": prediction})
    trainer = Trainer(config, str(tmp_path), images=images, log=lambda _: None)
    trainer.train_step()
    assert seen == [prediction]


def test_each_step_starts_from_fresh_gradients(tmp_path, images):
    """Gradients accumulate across backward calls (autograd adds into ``.grad``), so a step must
    clear them: a stale gradient left in every ``.grad`` before a step (NaN here, so any of it
    would show) must not reach the optimizer."""
    config = resolve("quick", overrides={**TINY, "steps": 2})
    trainer = Trainer(config, str(tmp_path), images=images, log=lambda _: None)
    finite, optimizer_step = [], trainer.optimizer.step

    def recording_optimizer_step():
        finite.append(all(np.isfinite(h(p.grad)).all() for p in trainer.model.parameters()
                          if p.grad is not None))
        optimizer_step()

    trainer.optimizer.step = recording_optimizer_step
    for _ in range(2):
        for p in trainer.model.parameters():
            p.grad = backend.xp().full(p.shape, float("nan"), dtype=p.dtype)
        trainer.train_step()
    assert finite == [True, True]
