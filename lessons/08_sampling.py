# %% [markdown]
# # Lesson 08 — Sampling: Algorithm 2, DDIM, and why it is slow
#
# Ho et al.'s sampler:
#
#     1: x_T ~ N(0, I)
#     2: for t = T, ..., 1:
#     3:   z ~ N(0, I) if t > 1, else z = 0
#     4:   x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)) + sigma_t z
#     5: return x_0
#
# To see what the sampler does apart from the network, we use data sets small enough that the
# *exact* optimal eps_theta is known in closed form, then compare DDPM with DDIM at several step
# counts, and finally measure the cost that motivates everything after DDPM: T network calls.
#
# Sections:
#
# 1. A one-point data set: the exact eps, and the last step without noise
# 2. A Gaussian data set: DDPM vs DDIM at 2 ... 1000 steps
# 3. A mixture of Gaussians: the exact eps in general, (8.1)-(8.3), and every sampler road
# 4. (If a checkpoint is shipped) DDPM vs DDIM on MNIST
# 5. The speed problem: time per sample as T and the image size grow
#
#     python lessons/08_sampling.py            # the full lesson
#     python lessons/08_sampling.py --quick    # a fast pass (used by the tests)
#     python lessons/08_sampling.py --out DIR  # where the figure goes (default runs/lessons)

# %%
import math
import pathlib
import statistics
import time

from _lesson import host, lesson_parser, pyplot, start  # finds minidiff; --quick, --out
import minidiff as md
from minidiff import backend
from minidiff.diffusion import NoiseSchedule, as_eps_model, ddim_sample, ddpm_sample
from minidiff.diffusion.oracles import GaussianMixture
from minidiff.models import UNet
from minidiff.data.paths import DataNotFoundError, resolve_user_path
from minidiff.tensor import Tensor, no_grad

np = backend.host  # NumPy, for host-side numbers in this lesson

parser = lesson_parser("Lesson 08: sampling", "a fast pass (smaller everything)")
parser.add_argument("--checkpoint", default="data/checkpoints/quick.npz",
                    help="a trained checkpoint for section 4 (skipped when absent)")
args, out_dir = start(parser)
xp = backend.xp()
schedule = NoiseSchedule.linear(1000)
T = schedule.num_timesteps


def abar_of(t, ndim):
    return schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (ndim - 1))


# %% [markdown]
# ## 1. One point: the exact eps and the noiseless last step
#
# If every training image is the same point x*, then x_t = sqrt(abar_t) x* + sqrt(1-abar_t) eps
# (2.4) can be solved for eps: the best possible network is
#
#     eps*(x_t, t) = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t).
#
# Its x_0 prediction (2.5) is x* at every step, so the posterior mean (3.4) at the last step
# (t = 1: coefficient of x_0 is 1, of x_1 is 0) *is* x*.  Algorithm 2 returns that mean
# without adding noise: adding sigma_1 z there would only blur the answer.

# %%
x_star = xp.asarray([[0.5, -0.25]], dtype=xp.float32)


def one_point_eps(x, t):
    x = x.data
    abar = abar_of(t, x.ndim)
    return (x - xp.sqrt(abar) * x_star) / xp.sqrt(1.0 - abar)


n = 64 if args.quick else 512
# Algorithm 2 by hand, line by line
x = backend.randn(n, 2)                                                       # line 1
for index in reversed(range(T)):                                              # line 2
    z = backend.randn(n, 2) if index > 0 else xp.zeros((n, 2), xp.float32)    # line 3
    beta, alpha, abar = (float(a[index]) for a in (schedule.betas, schedule.alphas,
                                                  schedule.alphas_cumprod))
    eps = one_point_eps(Tensor(x), xp.full((n,), index))
    sigma = math.sqrt(float(schedule.posterior_variance[index]))              # sigma_t^2 = beta~_t
    x = (x - beta / math.sqrt(1.0 - abar) * eps) / math.sqrt(alpha) + sigma * z  # line 4 (3.7)
by_hand_error = float(np.abs(host(x) - host(x_star)).max())
library = ddpm_sample(one_point_eps, schedule, (n, 2))
library_error = float(np.abs(host(library) - host(x_star)).max())
# the same loop but with sigma_t = sqrt(beta_t) (the "fixed_large" choice) *and* noise at t = 1
x_noisy_end = host(x_star) + math.sqrt(float(schedule.betas[0])) * host(backend.randn(n, 2))
noisy_error = float(np.abs(x_noisy_end - host(x_star)).max())
print(f"(3.7) Algorithm 2 by hand: max |x_0 - x*| = {by_hand_error:.2e}; ddpm_sample: "
      f"{library_error:.2e}; with noise sqrt(beta_1) z added at the end: {noisy_error:.2e}")
assert by_hand_error < 1e-4 and library_error < 1e-4
assert noisy_error > 10 * max(by_hand_error, library_error)

# %% [markdown]
# ## 2. A Gaussian data set: DDPM vs DDIM
#
# With only one point every sampler is exact.  Take instead data x_0 ~ N(mu, s^2 I): x_t is
# Gaussian too, and the exact posterior mean is
#
#     E[x_0 | x_t] = mu + sqrt(abar) s^2 / (abar s^2 + 1 - abar) (x_t - sqrt(abar) mu),
#
# so eps* = (x_t - sqrt(abar) E[x_0 | x_t]) / sqrt(1 - abar).  A perfect sampler returns
# samples with mean mu and standard deviation s.  With the network exact, every error left is
# the sampler's: DDPM (ancestral, respaced to fewer steps) vs DDIM (eta = 0, deterministic).

# %%
mu = xp.asarray([[0.5, -0.25]], dtype=xp.float32)
s_data = 0.3


def gaussian_eps(x, t):
    x = x.data
    abar = abar_of(t, x.ndim)
    x0_mean = mu + xp.sqrt(abar) * s_data ** 2 / (abar * s_data ** 2 + 1.0 - abar) * \
        (x - xp.sqrt(abar) * mu)
    return ((x - xp.sqrt(abar) * x0_mean) / xp.sqrt(1.0 - abar)).astype(x.dtype)


def quality(samples):
    h = host(samples)
    return float(np.abs(h.mean(0) - host(mu)[0]).max()), float(abs(h.std(0).mean() - s_data))


step_counts = (2, 10, 100, 1000) if args.quick else (2, 5, 10, 20, 50, 100, 250, 1000)
n = 4000 if args.quick else 20000
noise = backend.randn(n, 2)
table = []
print(f"{'steps':>6s} {'DDPM |mean err|':>16s} {'|std err|':>10s} "
      f"{'DDIM |mean err|':>16s} {'|std err|':>10s}")
for steps in step_counts:
    row = [steps]
    for sampler in (ddpm_sample, ddim_sample):
        md.manual_seed(1)
        row += quality(sampler(gaussian_eps, schedule, (n, 2), steps=steps, noise=noise,
                               clip_x0=False))
    table.append(row)
    print(f"{row[0]:6d} {row[1]:16.4f} {row[2]:10.4f} {row[3]:16.4f} {row[4]:10.4f}")
# with all T steps both samplers reproduce N(mu, s^2) up to sampling error (~ s / sqrt(n))
tolerance = 5 * s_data / math.sqrt(n)
assert max(table[-1][1:]) < tolerance, (table[-1], tolerance)
# at 10 and 100 steps DDIM's deterministic map is closer than ancestral DDPM
for row in table:
    if row[0] in (10, 100):
        assert row[4] < row[2], row

# %% [markdown]
# ## 3. A mixture of Gaussians: the exact eps in general
#
# Sections 1 and 2 guessed eps* from the form of the data.  There is a rule behind both.  The
# network that minimises L_simple (4.6) is the average noise given what it sees,
# eps*(x_t, t) = E[eps | x_t].  Write x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps (2.4) and let
# q(x_t) be its density.  Differentiating q(x_t) = E_{x_0}[N(x_t; sqrt(abar) x_0, (1 - abar) I)]
# under the expectation gives grad q = E_{x_0}[N(...) (sqrt(abar) x_0 - x_t) / (1 - abar)], and
# sqrt(abar) x_0 - x_t = -sqrt(1 - abar) eps, so grad log q(x_t) = -E[eps | x_t] / sqrt(1 - abar):
#
#     eps*(x_t, t) = -sqrt(1 - abar_t) grad log q(x_t)      (the score, up to a factor).
#
# For data x_0 ~ sum_k w_k N(m_k, s_k^2 I), x_t given component k is N(sqrt(abar) m_k, v_k I)
# with v_k = abar s_k^2 + 1 - abar, so x_t is a mixture too, and its score is a weighted sum:
#
#     q(x_t) = sum_k w_k N(x_t; sqrt(abar) m_k, v_k I)                                   (8.1)
#     eps*(x_t, t) = sqrt(1 - abar) sum_k r_k(x_t) (x_t - sqrt(abar) m_k) / v_k           (8.2)
#     r_k(x_t) = w_k N(x_t; sqrt(abar) m_k, v_k I) / q(x_t),
#
# r_k being how much component k explains x_t.  The x_0 and v an exact network would predict
# follow from (2.5)-(2.6): x0* = E[x_0 | x_t] = sum_k r_k (m_k + sqrt(abar) s_k^2 / v_k
# (x_t - sqrt(abar) m_k)) and v* = sqrt(abar) eps* - sqrt(1 - abar) x0*                 (8.3).
# One component is section 2's Gaussian; a point (s -> 0) is section 1's.
#
# ``minidiff.diffusion.oracles.GaussianMixture`` implements (8.1)-(8.3); the tests run every
# sampler with it.  Here we check (8.2) against a numerical gradient of log q, then sample:
# unlike a one-point data set, every step matters, and one step cannot get the mixture right.

# %%
mixture = GaussianMixture([[-0.5], [0.1], [0.6]], [0.1, 0.15, 0.08], [0.2, 0.3, 0.5])
m_k, s_k, w_k = (host(a) for a in (mixture.means[:, 0], mixture.stds, mixture.weights))


def log_q(x, abar):                                                          # (8.1), 1-D
    v = abar * s_k ** 2 + 1 - abar
    dens = w_k * np.exp(-0.5 * (x[:, None] - math.sqrt(abar) * m_k) ** 2 / v) / np.sqrt(
        2 * math.pi * v)
    return np.log(dens.sum(1))


probe = np.linspace(-2, 2, 9)
worst = 0.0
for index in (0, 100, 500, 999):
    abar = float(schedule.alphas_cumprod[index])
    h_step = 1e-5
    score = (log_q(probe + h_step, abar) - log_q(probe - h_step, abar)) / (2 * h_step)
    eps_star = host(mixture.eps(schedule, xp.asarray(probe[:, None]), xp.full((9,), index)))
    worst = max(worst, float(np.abs(eps_star[:, 0] + math.sqrt(1 - abar) * score).max()))
print(f"(8.2) eps* = -sqrt(1 - abar) grad log q: max |difference| from a central difference "
      f"= {worst:.1e}")
assert worst < 1e-6

# Each sampler with the exact model: how much mass lands nearest each component?
n_mix = 2000 if args.quick else 20000
edges = [-0.2, 0.35]                            # between the components
data_draws, _ = mixture.sample(200_000)
want_mass = np.bincount(np.digitize(host(data_draws)[:, 0], edges), minlength=3) / 200_000
mixture_rows = []
for label, run in (("DDPM, 1000 steps, fixed_large",
                    lambda m: ddpm_sample(m, schedule, (n_mix, 1), variance="fixed_large")),
                   ("DDIM eta=0, 100 steps", lambda m: ddim_sample(m, schedule, (n_mix, 1),
                                                                   steps=100)),
                   ("DDIM eta=0, 100 steps, v-network",
                    lambda m: ddim_sample(as_eps_model(mixture.model(schedule, "v"), schedule,
                                                       "v"), schedule, (n_mix, 1), steps=100)),
                   ("DDIM, 1 step", lambda m: ddim_sample(m, schedule, (n_mix, 1), steps=1))):
    md.manual_seed(3)
    drawn = host(run(mixture.model(schedule)))[:, 0]
    mass = np.bincount(np.digitize(drawn, edges), minlength=3) / n_mix
    mixture_rows.append((label, mass, drawn))
    print(f"{label:34s} mass per component {np.round(mass, 3)} (data {np.round(want_mass, 3)})")
mass_se = np.sqrt(want_mass * (1 - want_mass) / n_mix)
for label, mass, _ in mixture_rows[:3]:   # 5 standard errors, plus 0.01 for the sampler's own
    assert np.all(np.abs(mass - want_mass) < 5 * mass_se + 0.01), (label, mass)
one_step = mixture_rows[3][1]              # x0*(x_T): every sample near the mixture's mean
assert np.abs(one_step - want_mass).max() > 0.2, one_step

# %% [markdown]
# ## 4. A trained network (when a checkpoint is shipped)
#
# With `data/checkpoints/quick.npz` (written by `minidiff train`), the same comparison on
# MNIST: DDPM with all 1000 steps vs DDIM with 50.  Skipped when the file is absent.

# %%
checkpoint_images = None
# data/checkpoints/... is found from lessons/ (a notebook) or after pip install (minidiff.data.paths)
try:
    args.checkpoint = resolve_user_path(args.checkpoint)
except DataNotFoundError:      # not shipped with this copy: the comparison is skipped below
    pass
if pathlib.Path(args.checkpoint).exists():
    from minidiff.pipelines.load import load_pipeline

    # eps_theta of the checkpoint (a v- or x0-predicting network is converted by (2.6)/(2.5))
    pipeline = load_pipeline(args.checkpoint)
    trained, trained_schedule = pipeline.eps(), pipeline.schedule
    k = 4 if args.quick else 16
    shape = (k, *pipeline.space.shape)
    start = time.perf_counter()
    ddim_images = ddim_sample(trained, trained_schedule, shape, steps=10 if args.quick else 50)
    ddim_time = time.perf_counter() - start
    print(f"checkpoint {args.checkpoint}: DDIM {10 if args.quick else 50} steps, {k} images, "
          f"{ddim_time:.1f} s")
    checkpoint_images = [host(ddim_images)]
    if not args.quick:
        start = time.perf_counter()
        checkpoint_images.append(host(ddpm_sample(trained, trained_schedule, shape)))
        print(f"DDPM 1000 steps: {time.perf_counter() - start:.1f} s")
    assert np.isfinite(checkpoint_images[0]).all()
    from minidiff.data.mnist import from_unit_range
    from minidiff.data.images import save_grid

    # one row per sampler: DDIM (50 steps) above, DDPM (1000 steps) below in full mode
    sampled = np.concatenate(checkpoint_images)
    save_grid(from_unit_range(sampled), out_dir / "08_checkpoint_samples.png", nrow=k)
    print(f"samples written to {out_dir / '08_checkpoint_samples.png'}")
else:
    print(f"no checkpoint at {args.checkpoint}: section 4 skipped (run `minidiff train`)")

# %% [markdown]
# ## 5. The speed problem
#
# Every sampling step is one full network evaluation.  We time one no-grad forward pass of a
# U-Net at growing image sizes (attention at a quarter of the size, as in the reference) and
# multiply by the number of steps: T = 1000 DDPM steps versus 50 DDIM steps.  The cost grows
# at least with the number of pixels (convolutions), and attention's grows with its square.
# These are measurements on whatever machine runs the lesson, printed, not asserted: a timing
# on a busy machine can come out in any order (``minidiff bench`` is where speed is measured).

# %%
sizes = (16, 32) if args.quick else (28, 56, 112)
base = 8 if args.quick else 32
batch = 2 if args.quick else 4
repeats = 3
forward_ms = {}
for size in sizes:
    net = UNet(image_size=size, base_channels=base, attention_resolutions=(size // 4,))
    xs = Tensor(backend.randn(batch, 1, size, size))
    ts = xp.full((batch,), 500, dtype=xp.int64)
    with no_grad():
        net(xs, ts)                                 # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            net(xs, ts)
            times.append(time.perf_counter() - start)
    forward_ms[size] = 1e3 * statistics.median(times)
print(f"U-Net ({base} base channels) forward, batch {batch}, median of {repeats}:")
print(f"{'size':>8s} {'ms/forward':>11s} {'DDPM T=1000 (s)':>16s} {'DDIM 50 (s)':>12s}")
for size, ms in forward_ms.items():
    print(f"{size:>5d}^2 {ms:11.1f} {ms:16.1f} {ms * 50 / 1000:12.2f}")
growth = forward_ms[sizes[-1]] / forward_ms[sizes[0]]
print(f"x{(sizes[-1] / sizes[0]) ** 2:.0f} pixels costs x{growth:.1f} time "
      "(on a shared machine: indicative)")

# %% [markdown]
# ## A figure

# %%
plt = pyplot()   # None without matplotlib: the figures are then skipped
if plt is not None:
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    md.manual_seed(2)
    few = ddpm_sample(gaussian_eps, schedule, (2000, 2), steps=step_counts[0], clip_x0=False)
    md.manual_seed(2)
    many = ddpm_sample(gaussian_eps, schedule, (2000, 2), steps=step_counts[-1], clip_x0=False)
    axes[0].scatter(*host(many).T, s=2, alpha=0.5, label=f"DDPM {step_counts[-1]} steps")
    axes[0].scatter(*host(few).T, s=2, alpha=0.5, label=f"DDPM {step_counts[0]} steps")
    axes[0].add_patch(plt.Circle(tuple(host(mu)[0]), 2 * s_data, fill=False, color="k"))
    axes[0].set(title="N(mu, s^2) data, exact eps (circle: 2 s)", aspect="equal")
    axes[0].legend(fontsize=7)
    rows = np.array(table)
    axes[1].plot(rows[:, 0], rows[:, 2] + 1e-4, "o-", label="DDPM")
    axes[1].plot(rows[:, 0], rows[:, 4] + 1e-4, "s-", label="DDIM (eta=0)")
    axes[1].set(xscale="log", yscale="log", xlabel="steps", ylabel="|std - s|",
                title="fewer steps, worse samples")
    axes[1].legend()
    px = np.array(list(forward_ms)) ** 2
    axes[2].loglog(px, [forward_ms[s] * T / 1e3 for s in forward_ms], "o-", label="DDPM T=1000")
    axes[2].loglog(px, [forward_ms[s] * 50 / 1e3 for s in forward_ms], "s-", label="DDIM 50")
    axes[2].set(xlabel="pixels", ylabel=f"seconds per batch of {batch}",
                title="the speed problem")
    axes[2].legend()
    grid = np.linspace(-1, 1, 400)
    density = np.exp(log_q(grid, 1.0 - 1e-12))          # abar -> 1: the data's density (8.1)
    for label, _, drawn in (mixture_rows[0], mixture_rows[3]):
        axes[3].hist(drawn, bins=80, range=(-1, 1), density=True, alpha=0.5, label=label)
    axes[3].plot(grid, density, "k", lw=1, label="data")
    axes[3].set(title="mixture data, exact eps (8.2)", xlabel="x",
                ylim=(0, 1.5 * density.max()))   # the 1-step samples: one spike, cut off
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "08_sampling.png", dpi=100)
    plt.close(fig)
    print(f"figure written to {out_dir / '08_sampling.png'}")

# %% [markdown]
# ## Summary
#
# * (3.7) Algorithm 2 is the posterior mean at the predicted x_0 plus sigma_t z, with no
#   noise at the last step: for an exact model it returns the data point itself.
# * DDIM (eta = 0) reaches the data in far fewer steps than ancestral DDPM.
# * (8.1)-(8.3) The exact eps of any Gaussian mixture is -sqrt(1 - abar) times the score of
#   q(x_t), a responsibility-weighted sum: with it every sampler puts the right mass on each
#   component, while a single step collapses onto the mean.
# * Each step costs one U-Net pass, and that cost grows with the pixel count: 1000 of them
#   per sample is the price DDIM, distillation and latent diffusion all attack.

# %%
print("lesson 08: all checks passed")
