"""Three values pinned by an independent computation, each a place where a wrong formula ran
silently before: the latent space's scale factor on the decoding side (10.1), the importance
weights as the training loss applies them (13.3), and the masked-input baseline of the
inpainting accuracy (lesson 11)."""
import numpy as np
import pytest

from minidiff import backend
from minidiff.config.presets import resolve
from minidiff.data.spaces import LatentSpace
from minidiff.diffusion.resample import LossSecondMomentSampler
from minidiff.diffusion.schedule import NoiseSchedule
from minidiff.diffusion.training import training_step
from minidiff.tensor import Tensor
from minidiff.train.tasks import make_task


# ----------------------------------------------------------------------------- decode: D(z / s)

class LinearAutoencoder:
    """A hand-built autoencoder whose decoder is affine, D(z) = A vec(z) + b (a 28x28 image),
    so the decoded image of any latent has a closed form.  Only what ``LatentSpace`` calls."""

    def __init__(self, A, b, latent_shape):
        self.A, self.b, self.latent_shape = A, b, latent_shape

    def eval(self):
        return self

    def state_dict(self):
        return {"A": self.A, "b": self.b}

    def decode(self, z):
        n = z.data.shape[0]
        A, b = backend.to_device(self.A), backend.to_device(self.b)
        flat = z.data.reshape(n, -1).astype("float64")
        return Tensor((flat @ A.T + b).reshape(n, 1, 28, 28))


def test_latent_decode_divides_by_the_scale_factor():
    """decode(x0) = clip(A (x0 / s) + b) computed on the host by hand, for s = 0.25: dividing
    by s is what undoes the s of encode (z = s * (mu + sigma eps), (10.1)-(10.2)); multiplying
    by s, or forgetting s, gives an image 16 or 4 times too faint here."""
    rng = np.random.default_rng(0)
    shape, s = (2, 2, 2), 0.25
    A = rng.uniform(-0.05, 0.05, (28 * 28, 8))
    b = rng.uniform(-0.2, 0.2, 28 * 28)
    space = LatentSpace(LinearAutoencoder(A, b, shape), s)
    x0 = s * rng.standard_normal((3, *shape))            # latents as the diffusion draws them
    got = backend.to_host(space.decode(backend.to_device(x0.astype(np.float32))))
    want = (x0.reshape(3, -1) / s @ A.T + b).reshape(3, 1, 28, 28)
    assert np.abs(want).max() < 1.0                      # no clipping hides a wrong factor
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- importance weights

def _half(x, t):
    """A fixed 'network': eps_hat = x_t / 2 (its loss depends on t through x_t)."""
    return x * 0.5


def _warm_sampler(T, seed=0):
    """A warmed-up sampler whose p_t is far from uniform (losses spanning 3 decades)."""
    rng = np.random.default_rng(seed)
    sampler = LossSecondMomentSampler(T, history=2)
    scale = 10.0 ** np.arange(T) / 10.0
    for _ in range(2):
        sampler.update(np.arange(T), scale * rng.uniform(0.5, 1.5, T))
    assert sampler.warmed_up()
    return sampler


def test_weighted_training_loss_is_the_uniform_t_loss_in_expectation():
    """By brute force over every t of a T = 4 schedule: with t drawn from the sampler's p_t
    (computed here by hand from its history) and the weights its draws return, the expected
    *weighted* training loss sum_t p_t w_t L_t equals the uniform-t loss (1/T) sum_t L_t
    (13.3).  Weights 1/p (no T), T p, or weights the loss ignores all fail."""
    T = 4
    schedule = NoiseSchedule.linear(T, beta_start=0.1, beta_end=0.6)
    sampler = _warm_sampler(T)
    root = np.sqrt((sampler.history ** 2).mean(axis=1))
    p = 0.999 * root / root.sum() + 0.001 / T             # p_t by hand (13.3)
    assert p.max() / p.min() > 10
    backend.manual_seed(0)
    t_drawn, w_drawn = (backend.to_host(a) for a in sampler.draw(4000))
    weight_of = {int(t): float(w) for t, w in zip(t_drawn, w_drawn)}
    assert sorted(weight_of) == list(range(T))            # every t drawn at least once
    rng = np.random.default_rng(1)
    x0 = backend.to_device(rng.uniform(-1, 1, (1, 1, 3, 3)).astype(np.float32))
    noise = backend.to_device(rng.standard_normal((1, 1, 3, 3)).astype(np.float32))

    def loss(t, weight=None):
        weights = None if weight is None else backend.to_device(np.array([weight]))
        return training_step(_half, schedule, x0, t=backend.to_device(np.array([t])),
                             noise=noise, weights=weights).item()

    uniform = np.mean([loss(t) for t in range(T)])
    weighted = sum(p[t] * loss(t, weight_of[t]) for t in range(T))
    assert weighted == pytest.approx(uniform, rel=1e-5)


def test_the_training_task_applies_the_samplers_weights():
    """The diffusion task's loss, with t from a warmed-up importance sampler, is the mean of
    w_i L_i over the batch, with w_i the weights the sampler's draw returned and L_i the
    per-item losses it was fed back: the weights reach the loss that is backpropagated."""
    config = resolve("quick", sets=["base_channels=8", "channel_mults=[1,2]", "T=6",
                                    "t_sampler=loss-second-moment", "sample_steps=2"],
                     overrides={"steps": 1, "batch_size": 8})
    images = np.random.default_rng(0).integers(0, 256, (8, 1, 28, 28)).astype(np.uint8)
    backend.manual_seed(0)
    task = make_task(config, images, log=lambda line: None)
    task.t_sampler = sampler = _warm_sampler(6)
    seen = {}
    draw, update = sampler.draw, sampler.update
    sampler.draw = lambda n: seen.setdefault("draw", draw(n))
    sampler.update = lambda t, losses: (seen.setdefault("losses", np.array(losses)),
                                        update(t, losses))
    loss, _ = task.loss(np.arange(8))
    w = backend.to_host(seen["draw"][1])
    assert w.max() / w.min() > 2                          # the weights matter here
    assert loss.item() == pytest.approx(float(np.mean(w * seen["losses"])), rel=1e-5)
    assert loss.item() != pytest.approx(float(np.mean(seen["losses"])), rel=1e-2)


# ----------------------------------------------------------------------------- inpainting baseline

def test_inpainting_masked_input_baseline_by_hand(tmp_path):
    """``masked_accuracy`` is the shipped classifier's accuracy on the first n test digits
    with their bottom half (rows 14..27) set to background, built here by hand, whatever the
    model completes (a 1-step tiny model: its completions do not matter to this figure).
    Masking the kept half instead, or not masking, gives another figure."""
    from minidiff.data.mnist import load_mnist
    from minidiff.evaluate.classifier import classify, load_classifier
    from minidiff.evaluate.inpainting import inpainting_accuracy
    from minidiff.train.trainer import Trainer
    config = resolve("quick", sets=["base_channels=8", "channel_mults=[1,2]", "T=10",
                                    "sample_every=0", "diag_every=0", "log_every=0",
                                    "checkpoint_every=0", "warmup_steps=1", "sample_steps=2"],
                     overrides={"steps": 1, "batch_size": 4})
    images = np.random.default_rng(0).integers(0, 256, (8, 1, 28, 28)).astype(np.uint8)
    run = str(tmp_path / "run")
    Trainer(config, run, images=images, log=lambda line: None).run()
    n = 60
    result = inpainting_accuracy(f"{run}/ema.npz", n=n, mask="bottom", steps=2, batch=60)
    test, labels = load_mnist("test")
    masked = np.array(backend.to_host(test[:n]), copy=True)
    masked[:, :, 14:, :] = 0                                  # the hidden half: background
    x = backend.to_device(masked.astype(np.float32) / 127.5 - 1.0)
    _, probs = classify(load_classifier(), x)
    want = float((backend.to_host(probs).argmax(axis=1) == backend.to_host(labels[:n])).mean())
    assert result["masked_accuracy"] == pytest.approx(want, abs=1e-12)
    assert abs(want - result["original_accuracy"]) > 0.1     # the mask matters on these digits
