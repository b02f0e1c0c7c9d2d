# %% [markdown]
# # Lesson 07 — Training: Algorithm 1
#
# Ho et al.'s (2020) training loop, Algorithm 1, fits in six lines:
#
# $$
# \begin{aligned}
# &1:\ \textbf{repeat}\\
# &2:\quad x_0 \sim q(x_0) &&\text{a batch of training images}\\
# &3:\quad t \sim \mathrm{Uniform}(\{1, \dots, T\}) &&\text{one step per image}\\
# &4:\quad \epsilon \sim \mathcal N(0, I)\\
# &5:\quad \text{gradient step on } \nabla_\theta \big\lVert \epsilon - \epsilon_\theta\big(
#     \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t\big)\big\rVert^2\\
# &6:\ \textbf{until converged}
# \end{aligned}
# $$
#
# We write each line out on MNIST, check that our line-5 loss is exactly what
# `minidiff.diffusion.training_step` computes ($L_\text{simple}$, (4.6), with $x_t$ from
# (2.4)), watch the loss fall, and show what the loss's minimiser is: the average noise given
# $x_t$, $\mathbb E[\epsilon \mid x_t]$.
#
#     python lessons/07_training.py            # a few minutes: a small U-Net, some hundred steps
#     python lessons/07_training.py --quick    # seconds: a tiny U-Net (used by the tests)
#     python lessons/07_training.py --out DIR  # where the figure goes (default runs/lessons)

# %%
import math
import time

from _lesson import host, lesson_parser, pyplot, start  # finds minidiff; --quick, --out
from minidiff import backend
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.diffusion import NoiseSchedule, q_sample, training_step
from minidiff.models import UNet
from minidiff.optim import AdamW
from minidiff.tensor import Tensor

np = backend.host  # NumPy, for host-side numbers in this lesson

args, out_dir = start(lesson_parser("Lesson 07: training (Algorithm 1)", "a tiny U-Net for a few seconds"))

if args.quick:   # a 14x14 crop of the digits' centre and a 46k-parameter U-Net
    size, model_kwargs, batch, steps, lr = 14, dict(base_channels=8, channel_mults=(1, 2),
                                                    num_res_blocks=1,
                                                    attention_resolutions=(7,)), 8, 15, 5e-3
else:            # full 28x28 digits, a 16-channel U-Net
    size, model_kwargs, batch, steps, lr = 28, dict(base_channels=16), 32, 400, 1e-3


# %% [markdown]
# ## The data: $x_0 \sim q(x_0)$
#
# MNIST digits, scaled from $[0, 255]$ to $[-1, 1]$ so that they live on the same scale as the
# $\mathcal N(0, I)$ noise the forward process ends in.

# %%
images, _ = load_mnist("train")
if size != 28:
    lo = (28 - size) // 2
    images = images[:, :, lo:lo + size, lo:lo + size]
data = to_unit_range(images[:4096 if args.quick else 60000])
print(f"x_0: {tuple(data.shape)} in [{float(data.min()):.0f}, {float(data.max()):.0f}]")
assert float(data.min()) >= -1.0 and float(data.max()) <= 1.0

schedule = NoiseSchedule.linear(1000)
model = UNet(image_size=size, **model_kwargs)
optimizer = AdamW(model.parameters(), lr=lr, weight_decay=0.0)
print(f"U-Net with {model.num_parameters():,} parameters, batch {batch}, {steps} steps, "
      f"linear schedule T = {schedule.num_timesteps}")

# %% [markdown]
# ## One step of Algorithm 1, line by line
#
# Line 5 builds $x_t$ in closed form (2.4), asks the network for $\epsilon$, and takes the
# mean squared error (4.6).  The library's `training_step` does exactly this; with the same t and
# eps the two losses agree to the last bit.

# %%
xp = backend.xp()
x0 = data[backend.to_device(backend.randint(0, data.shape[0], (batch,)))]        # line 2
t = backend.randint(0, schedule.num_timesteps, (batch,))                      # line 3 (0-based)
eps = backend.randn(*x0.shape)                                                # line 4
abar = schedule.alphas_cumprod[t][:, None, None, None]
x_t = xp.sqrt(abar) * x0 + xp.sqrt(1.0 - abar) * eps                          # (2.4)
assert np.allclose(host(x_t), host(q_sample(schedule, x0, t, eps)), atol=1e-6)
prediction = model(Tensor(x_t), t)
ours = ((prediction - Tensor(eps)) ** 2).mean()                               # line 5, (4.6)
library = training_step(model, schedule, x0, t=t, noise=eps)
print(f"(2.4) x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps; (4.6) loss by hand {float(ours.data):.6f}"
      f" == training_step {float(library.data):.6f}")
assert abs(float(ours.data) - float(library.data)) < 1e-6

# %% [markdown]
# ## The loop
#
# Repeat: a fresh batch, fresh $t$, fresh $\epsilon$, backward, AdamW.  The loss starts near 1
# (the untrained network says roughly "zero noise" and $\epsilon$ has variance 1) and falls as
# the network learns to see the noise.  Late steps ($t$ near $T$) are easy — $x_t$ is nearly
# all noise, so $\epsilon \approx x_t$ — and early steps are hard; the batch loss is noisy
# because $t$ is random.

# %%
losses, start = [], time.perf_counter()
for step in range(steps):
    x0 = data[backend.to_device(backend.randint(0, data.shape[0], (batch,)))]
    optimizer.zero_grad()
    loss = training_step(model, schedule, x0)
    loss.backward()
    optimizer.step()
    losses.append(float(loss.data))
    if step % max(1, steps // 10) == 0 or step == steps - 1:
        print(f"  step {step:4d}  loss {losses[-1]:.4f}")
elapsed = time.perf_counter() - start
print(f"{steps} steps in {elapsed:.1f} s ({1e3 * elapsed / steps:.0f} ms/step)")

window = max(3, steps // 8)
first, last = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
print(f"mean loss over the first {window} steps {first:.4f}, over the last {window} {last:.4f}")
assert last < 0.8 * first, "the loss should fall"

# %% [markdown]
# ## Which $t$ are hard?
#
# Evaluate the trained network's loss at a few fixed $t$ on one batch: the error is largest at
# small $t$, where the noise is a faint veneer on the digit.

# %%
from minidiff.tensor import no_grad  # noqa: E402

x0 = data[:batch]
per_t = {}
with no_grad():
    for index in (0, 50, 250, 500, 999):
        tt = xp.full((batch,), index, dtype=xp.int64)
        per_t[index] = float(training_step(model, schedule, x0, t=tt).data)
print("loss at fixed t: " + ", ".join(f"t={k}: {v:.3f}" for k, v in per_t.items()))
assert per_t[999] < per_t[0]

# %% [markdown]
# ## A figure: the loss curve

# %%
plt = pyplot()   # None without matplotlib: the figures are then skipped
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(losses, lw=0.8, label="batch loss")
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    axes[0].plot(np.arange(window - 1, steps), smooth, lw=2, label=f"mean of {window}")
    axes[0].set(title="Algorithm 1 on MNIST", xlabel="step", ylabel="L_simple (4.6)",
                yscale="log")
    axes[0].legend()
    axes[1].plot(list(per_t), list(per_t.values()), "o-")
    axes[1].set(title="loss of the trained net at fixed t", xlabel="t (0-based)",
                ylabel="MSE")
    fig.tight_layout()
    fig.savefig(out_dir / "07_training.png", dpi=100)
    plt.close(fig)
    print(f"figure written to {out_dir / '07_training.png'}")

# %% [markdown]
# ## What should the network predict?  $\epsilon$, $x_0$ or $v$
#
# Line 5 asks for the noise $\epsilon$, but $x_0$ is what sampling needs, through (2.5):
#
# $$ \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}} $$
#
# so an error $\delta$ in $\hat\epsilon$ becomes an error $\delta\sqrt{1/\bar\alpha_t - 1}$
# in $\hat x_0$: about $160\,\delta$ at $t = T$ for the linear schedule.  A short training run
# leaves the network's $\epsilon$ a little off at large $t$, and the first sampling steps then
# start from $x_0$ guesses far outside $[-1, 1]$ (grey, blotchy backgrounds in the samples).
# Predicting the velocity $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$
# (2.6) instead gives $\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v$:
# the same $\delta$ now costs at most $\delta$.
# The `quick` preset of `minidiff train` trains v for that reason (`--set prediction=v`);
# `as_eps_model` turns such a network back into the eps_theta the samplers expect.
# Below, the amplification is measured with the library's conversions.

# %%
from minidiff.diffusion import predict_x0_from_eps, predict_x0_from_v  # noqa: E402

delta = 0.01
x_t_probe = backend.randn(4, 1, size, size, dtype="float64")
for index in (0, 500, schedule.num_timesteps - 1):
    tt = xp.full((4,), index, dtype=xp.int64)
    abar = float(backend.to_host(schedule.alphas_cumprod)[index])
    from_eps = (predict_x0_from_eps(schedule, x_t_probe, tt, x_t_probe + delta)
                - predict_x0_from_eps(schedule, x_t_probe, tt, x_t_probe))
    from_v = (predict_x0_from_v(schedule, x_t_probe, tt, x_t_probe + delta)
              - predict_x0_from_v(schedule, x_t_probe, tt, x_t_probe))
    gain_eps = float(abs(host(from_eps)).max()) / delta
    gain_v = float(abs(host(from_v)).max()) / delta
    print(f"t={index:4d}: an eps error is multiplied by {gain_eps:8.2f} "
          f"(sqrt(1/abar - 1) = {math.sqrt(1 / abar - 1):8.2f}), a v error by {gain_v:.3f}")
    assert abs(gain_eps - math.sqrt(1 / abar - 1)) < 1e-6 * max(1.0, gain_eps)
    assert gain_v <= 1.0 + 1e-9

# %% [markdown]
# ## What the loss is minimised by: $\mathbb E[\epsilon \mid x_t]$
#
# For one $t$, split the error of any function $f(x_t)$ around the conditional mean
# $f^*(x_t) = \mathbb E[\epsilon \mid x_t]$:
#
# $$
# \mathbb E\,\lVert\epsilon - f(x_t)\rVert^2 = \mathbb E\,\lVert\epsilon - f^*(x_t)\rVert^2
#   + \mathbb E\,\lVert f^*(x_t) - f(x_t)\rVert^2 ,
# $$
#
# because the cross term $2\,\mathbb E\big[(\epsilon - f^*)\cdot(f^* - f)\big]$ is, given
# $x_t$, $(f^* - f)\cdot\mathbb E[\epsilon - f^* \mid x_t] = 0$.  So the loss at each $t$ is
# smallest for $f = f^*$ exactly, and the best network is
# $\epsilon_\theta(x_t, t) = \mathbb E[\epsilon \mid x_t]$ (lesson 08 computes it for
# Gaussian mixtures).  A consequence: weighing the terms by any positive $\lambda_t$, as the
# bound does (13.5), has the *same* minimiser at every $t$; with unlimited capacity the
# weights change nothing, and with a finite network they only decide where its capacity is
# spent.
#
# A check that can fail: on data whose $\mathbb E[\epsilon \mid x_t]$ is known (a mixture of
# three Gaussians in one dimension, `diffusion/oracles.py`, (8.2)), the two sides of the
# split, by Monte Carlo, for a few wrong $f$.  If $f^*$ were not the conditional mean (try
# the mixture's $\epsilon$ at the wrong $t$) the cross term would not vanish.

# %%
from minidiff.diffusion.oracles import GaussianMixture  # noqa: E402

mixture = GaussianMixture([[-0.5], [0.1], [0.6]], [0.1, 0.15, 0.08], [0.2, 0.3, 0.5])


def check_minimiser(schedule, mixture, n_mc, indices=(50, 300, 700)):
    """E|eps - f|^2 = E|eps - f*|^2 + E|f* - f|^2 for f* = mixture.eps (E[eps | x_t], (8.2))
    and three other f: the cross term within 5 standard errors of 0.  Returns the floors."""
    xp = backend.xp()
    x0 = backend.array_of(mixture.sample(n_mc)[0]).astype("float64")
    floors = {}
    for index in indices:
        tt = xp.full((n_mc,), index, dtype=xp.int64)
        eps = backend.randn(n_mc, 1, dtype="float64")
        best = mixture.eps(schedule, q_sample(schedule, x0, tt, eps), tt)   # f* = E[eps | x_t]
        floors[index] = float(((eps - best) ** 2).mean())
        for label, other in (("0.8 f*", 0.8 * best), ("f* + 0.1", best + 0.1),
                             ("x_t", q_sample(schedule, x0, tt, eps))):
            cross = host(2 * (eps - best) * (best - other))   # total - floor - gap, per draw
            standard_error = float(cross.std()) / math.sqrt(n_mc)
            assert abs(float(cross.mean())) < 5 * standard_error, (index, label)
            assert float(((eps - other) ** 2).mean()) > floors[index]
    return floors


for index, floor in check_minimiser(schedule, mixture,
                                    100_000 if args.quick else 1_000_000).items():
    print(f"t = {index + 1:4d}: E|eps - f|^2 = E|eps - f*|^2 + E|f* - f|^2 for f = 0.8 f*, "
          f"f* + 0.1, x_t; the floor E|eps - f*|^2 = {floor:.4f}")

# %% [markdown]
# ## Summary
#
# * Algorithm 1 is (2.4) plus the MSE (4.6) between the true and the predicted noise; its
#   minimiser at every $t$ is $\mathbb E[\epsilon \mid x_t]$, whatever positive weights the
#   terms get.
# * One random t per image: every step of the chain is trained at once, by sampling.
# * `minidiff train` runs the same loop with EMA, checkpoints and the reference U-Net.
#
# Next: sampling with Algorithm 2.

# %%
print("lesson 07: all checks passed")
