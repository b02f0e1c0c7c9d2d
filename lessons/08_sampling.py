# %% [markdown]
# # Lesson 08 — Sampling: Algorithm 2, DDIM, respacing, and why it is slow
#
# Ho et al. (2020), Algorithm 2, the ancestral sampler:
#
# $$
# \begin{aligned}
# &1:\ x_T \sim \mathcal N(0, I)\\
# &2:\ \textbf{for } t = T, \dots, 1:\\
# &3:\quad z \sim \mathcal N(0, I) \text{ if } t > 1, \text{ else } z = 0\\
# &4:\quad x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,
#        \epsilon_\theta(x_t, t)\Big) + \sigma_t z\\
# &5:\ \textbf{return } x_0
# \end{aligned}
# $$
#
# To see what the sampler does apart from the network, we use data sets small enough that the
# *exact* optimal $\epsilon_\theta$ is known in closed form.  Then we derive DDIM (Song et al.
# 2021) and respacing (Nichol & Dhariwal 2021), which every default command of minidiff uses
# to sample in 50 steps instead of 1000, and finally measure the cost that motivates everything
# after DDPM: $T$ network calls.
#
# Sections:
#
# 1. Algorithm 2 by hand against `ddpm_sample`, step by step, on Gaussian data
# 2. Gaussian data: DDPM against DDIM at 2 ... 1000 steps
# 3. A mixture of Gaussians: the exact $\epsilon$ in general, (8.1)-(8.3), and every sampler road
# 4. DDIM and respacing derived, (8.4)-(8.8), each checked against the library
# 5. (If a checkpoint is shipped) DDPM against DDIM on MNIST
# 6. The speed problem: time per sample as $T$ and the image size grow
#
#     python lessons/08_sampling.py            # the full lesson
#     python lessons/08_sampling.py --quick    # a fast pass (used by the tests)
#     python lessons/08_sampling.py --out DIR  # where the figures go (default runs/lessons)
#
# The code it teaches: `minidiff/diffusion/samplers.py` (`ddpm_sample`, `ddim_step`,
# `ddim_sample`, `ddim_invert`), `minidiff/diffusion/respace.py` and
# `minidiff/diffusion/reverse.py` (`p_mean_variance`).

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
from minidiff.diffusion.respace import respace, space_timesteps
from minidiff.diffusion.reverse import p_mean_variance
from minidiff.diffusion.samplers import ddim_invert, ddim_step
from minidiff.models import UNet
from minidiff.data.paths import DataNotFoundError, resolve_user_path
from minidiff.tensor import Tensor, no_grad

np = backend.host  # NumPy, for host-side numbers in this lesson

args_parser = lesson_parser("Lesson 08: sampling", "a fast pass (smaller everything)")
args_parser.add_argument("--checkpoint", default="data/checkpoints/quick.npz",
                         help="a trained checkpoint for section 5 (skipped when absent)")
args, out_dir = start(args_parser)
xp = backend.xp()
schedule = NoiseSchedule.linear(1000)
T = schedule.num_timesteps


def device(array):
    """A host array (float64) on the active backend."""
    return backend.to_device(np.asarray(array, dtype=np.float64))


def abar_of(schedule, t, ndim):
    return schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (ndim - 1))


# %% [markdown]
# ## 1. Algorithm 2, by hand and by the library
#
# Line 4 is (3.7): the posterior mean (3.4) at the network's guess of $x_0$ (2.5), written
# with the noise.  Substituting $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta)
# / \sqrt{\bar\alpha_t}$ into $\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t}
# \hat x_0 + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t} x_t$, the coefficient
# of $x_t$ becomes $\frac{\beta_t + \alpha_t(1-\bar\alpha_{t-1})}{\sqrt{\alpha_t}(1-\bar\alpha_t)}
# = \frac{1}{\sqrt{\alpha_t}}$ (because $\beta_t + \alpha_t - \bar\alpha_t = 1 - \bar\alpha_t$)
# and that of $\epsilon_\theta$ becomes $-\frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1-\bar\alpha_t}}$:
#
# $$
# \mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}
#   \,\epsilon_\theta(x_t, t)\Big), \qquad
# \sigma_t^2 = \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t .
# \tag{3.7}
# $$
#
# Two checks, each computed from the betas alone (here $\bar\alpha_t$ is a `cumprod` of our
# own, not the schedule's):
#
# * one step: (3.7) and $\tilde\beta_t$ by hand against the library's `p_mean_variance` for
#   random $x_t$ and $\epsilon$ at several $t$;
# * the whole chain: the five lines above by hand, and `ddpm_sample`, from the same $x_T$ and
#   the same draws of $z$, compared state by state; the samples must then have the data's
#   mean and spread.
#
# The data must make every step matter.  With a one-point data set $\{x^*\}$ the exact
# network predicts $\hat x_0 = x^*$ at every step, and the last step (at $t = 1$ the
# coefficient of $x_1$ in (3.4) is 0) returns $x^*$ *whatever the earlier steps did*: a wrong
# coefficient in (3.7) or a wrong $\sigma_t$ would pass.  So we take Gaussian data
# $x_0 \sim \mathcal N(\mu, \rho^2 I)$: $x_t$ is Gaussian too, the exact posterior mean is
#
# $$
# \mathbb E[x_0 \mid x_t] = \mu + \frac{\sqrt{\bar\alpha_t}\, \rho^2}{\bar\alpha_t \rho^2 + 1 - \bar\alpha_t}
#   \big(x_t - \sqrt{\bar\alpha_t}\,\mu\big),
# $$
#
# and the exact network is $\epsilon^* = (x_t - \sqrt{\bar\alpha_t}\,\mathbb E[x_0 \mid x_t])
# / \sqrt{1 - \bar\alpha_t}$.  A chain with a wrong step ends with the wrong spread.
#
# Why no noise at the last step: $\tilde\beta_1 = 0$ ($\bar\alpha_0 = 1$): given $x_1$ *and*
# $x_0$, $x_0$ is known.  Adding $\sigma_1 z$ there would only blur the answer.

# %%
mu = xp.asarray([[0.5, -0.25]], dtype=xp.float64)
s_data = 0.3


def gaussian_eps(x, t):
    """eps* of N(mu, rho^2 I) data (rho = s_data): (x_t - sqrt(abar) E[x_0 | x_t]) / sqrt(1 - abar)."""
    x = x.data
    abar = abar_of(schedule, t, x.ndim)
    x0_mean = mu + xp.sqrt(abar) * s_data ** 2 / (abar * s_data ** 2 + 1.0 - abar) * \
        (x - xp.sqrt(abar) * mu)
    return ((x - xp.sqrt(abar) * x0_mean) / xp.sqrt(1.0 - abar)).astype(x.dtype)


def check_reverse_step(schedule, indices=(1, 2, 10, 100, 500, 999)):
    """(3.7) and sigma_t^2 = beta~_t (3.3), by hand from the betas, against p_mean_variance
    (fixed_small, no clipping) for random x_t and eps; returns the largest mean difference."""
    betas = host(schedule.betas).astype(np.float64)
    abar = np.cumprod(1.0 - betas)                                          # (2.3), by hand
    rng = np.random.default_rng(0)
    worst = 0.0
    for index in indices:
        x_t, eps = rng.standard_normal((2, 4, 3))
        beta, alpha = betas[index], 1.0 - betas[index]
        mean = (x_t - beta / math.sqrt(1.0 - abar[index]) * eps) / math.sqrt(alpha)   # (3.7)
        variance = (1.0 - abar[index - 1]) / (1.0 - abar[index]) * beta               # (3.3)
        out = p_mean_variance(schedule, device(eps), device(x_t),
                              backend.to_device(np.full(4, index, dtype=np.int64)),
                              variance="fixed_small", clip_x0=False)
        np.testing.assert_allclose(host(out["mean"]), mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(host(out["variance"]).ravel(), variance, rtol=1e-9)
        worst = max(worst, float(np.abs(host(out["mean"]) - mean).max()))
    return worst


def check_algorithm2(schedule, n=2000, seed=5):
    """Algorithm 2 by hand ((3.7), sigma_t^2 = beta~_t) and ddpm_sample from the same draws,
    compared state by state; then the samples against N(mu, rho^2).  Returns (largest state
    difference, |mean error|, |std error|)."""
    betas = host(schedule.betas).astype(np.float64)
    alphas, abar = 1.0 - betas, np.cumprod(1.0 - betas)
    md.manual_seed(seed)
    x = backend.randn(n, 2, dtype="float64")                                     # line 1
    states = [x]
    for index in reversed(range(len(betas))):                                    # line 2
        z = backend.randn(n, 2, dtype="float64") if index > 0 else 0.0           # line 3
        sigma = math.sqrt((1.0 - abar[index - 1]) / (1.0 - abar[index]) * betas[index]) \
            if index > 0 else 0.0                                                # beta~_t
        eps = gaussian_eps(Tensor(x), xp.full((n,), index))
        x = (x - betas[index] / math.sqrt(1.0 - abar[index]) * eps) \
            / math.sqrt(alphas[index]) + sigma * z                              # line 4 (3.7)
        states.append(x)
    md.manual_seed(seed)
    _, frames = ddpm_sample(gaussian_eps, schedule, (n, 2), clip_x0=False, dtype="float64",
                            return_frames=True)
    assert len(frames) == len(states), (len(frames), len(states))
    gap = max(float(np.abs(host(a) - host(b)).max()) for a, b in zip(states, frames))
    assert gap < 1e-8, f"ddpm_sample leaves Algorithm 2 by {gap:.3g}"
    final = host(frames[-1])
    mean_error = float(np.abs(final.mean(0) - host(mu)[0]).max())
    std_error = float(np.abs(final.std(0) - s_data).max())
    standard_error = s_data / math.sqrt(n)       # of the mean; that of the std is ~ 1/sqrt(2) of it
    assert mean_error < 5 * standard_error and std_error < 5 * standard_error, \
        (mean_error, std_error, standard_error)
    return gap, mean_error, std_error


step_gap = check_reverse_step(schedule)
chain_gap, chain_mean_error, chain_std_error = check_algorithm2(schedule, 500 if args.quick else 4000)
print(f"(3.7) one step by hand == p_mean_variance (largest difference {step_gap:.1e}), "
      f"sigma_t^2 == beta~_t by hand")
print(f"(3.7) Algorithm 2 by hand == ddpm_sample state by state over all {T} steps (largest "
      f"difference {chain_gap:.1e}); samples: |mean - mu| = {chain_mean_error:.4f}, "
      f"|std - rho| = {chain_std_error:.4f}")

# %% [markdown]
# ## 2. Gaussian data: DDPM against DDIM
#
# A perfect sampler returns samples with mean $\mu$ and standard deviation $\rho$.  With the
# network exact, every error left is the sampler's: DDPM (ancestral, respaced to fewer steps)
# against DDIM ($\eta = 0$, deterministic), both derived in section 4.

# %%


def quality(samples):
    h = host(samples)
    return float(np.abs(h.mean(0) - host(mu)[0]).max()), float(abs(h.std(0).mean() - s_data))


step_counts = (2, 10, 100, 1000) if args.quick else (2, 5, 10, 20, 50, 100, 250, 1000)
n = 4000 if args.quick else 20000
md.manual_seed(0)
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
# with all T steps both samplers reproduce N(mu, rho^2) up to sampling error (~ rho / sqrt(n))
tolerance = 5 * s_data / math.sqrt(n)
assert max(table[-1][1:]) < tolerance, (table[-1], tolerance)
# at 10 and 100 steps DDIM's deterministic map is closer than ancestral DDPM
for row in table:
    if row[0] in (10, 100):
        assert row[4] < row[2], row

# %% [markdown]
# ## 3. A mixture of Gaussians: the exact $\epsilon$ in general
#
# Section 1 guessed $\epsilon^*$ from the form of the data.  There is a rule behind it.  The
# network that minimises $L_\text{simple}$ (4.6) is the average noise given what it sees,
# $\epsilon^*(x_t, t) = \mathbb E[\epsilon \mid x_t]$.  Write
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ (2.4) and let $q(x_t)$
# be its density.  Differentiating
# $q(x_t) = \mathbb E_{x_0}\big[\mathcal N(x_t; \sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)\big]$
# under the expectation gives
# $\nabla q = \mathbb E_{x_0}\big[\mathcal N(\dots)\,(\sqrt{\bar\alpha_t}\,x_0 - x_t)/(1-\bar\alpha_t)\big]$,
# and $\sqrt{\bar\alpha_t}\,x_0 - x_t = -\sqrt{1-\bar\alpha_t}\,\epsilon$, so
# $\nabla \log q(x_t) = -\mathbb E[\epsilon \mid x_t] / \sqrt{1-\bar\alpha_t}$:
#
# $$\epsilon^*(x_t, t) = -\sqrt{1-\bar\alpha_t}\,\nabla \log q(x_t)
#   \qquad \text{(the score, up to a factor).}$$
#
# For data $x_0 \sim \sum_k w_k \mathcal N(m_k, s_k^2 I)$, $x_t$ given component $k$ is
# $\mathcal N(\sqrt{\bar\alpha_t}\,m_k, v_k I)$ with $v_k = \bar\alpha_t s_k^2 + 1 - \bar\alpha_t$,
# so $x_t$ is a mixture too, and its score is a weighted sum:
#
# $$q(x_t) = \sum_k w_k\,\mathcal N(x_t; \sqrt{\bar\alpha_t}\,m_k, v_k I) \tag{8.1}$$
#
# $$\epsilon^*(x_t, t) = \sqrt{1-\bar\alpha_t}\sum_k r_k(x_t)\,\frac{x_t - \sqrt{\bar\alpha_t}\,m_k}{v_k},
# \qquad r_k(x_t) = \frac{w_k\,\mathcal N(x_t; \sqrt{\bar\alpha_t}\,m_k, v_k I)}{q(x_t)} \tag{8.2}$$
#
# $r_k$ being how much component $k$ explains $x_t$.  The $x_0$ and $v$ an exact network would
# predict follow from (2.5)-(2.6):
#
# $$x_0^* = \mathbb E[x_0 \mid x_t] = \sum_k r_k\Big(m_k + \frac{\sqrt{\bar\alpha_t}\,s_k^2}{v_k}
#   (x_t - \sqrt{\bar\alpha_t}\,m_k)\Big), \qquad
#   v^* = \sqrt{\bar\alpha_t}\,\epsilon^* - \sqrt{1-\bar\alpha_t}\,x_0^* \tag{8.3}$$
#
# One component is section 1's Gaussian; a point ($s \to 0$) is the one-point data set.
#
# `minidiff.diffusion.oracles.GaussianMixture` implements (8.1)-(8.3); the tests run every
# sampler with it.  Here we check (8.2) against a numerical gradient of $\log q$, then sample:
# every step matters, and one step cannot get the mixture right.

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
# ## 4. DDIM and respacing
#
# Training never sees the chain: $L_\text{simple}$ (4.6) only uses the marginals
# $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$ (2.4).  So any
# other forward process with the same marginals has the same optimal network, and a sampler
# may reverse whichever of them is cheapest.  Song et al. (2021, "Denoising Diffusion Implicit
# Models", eq. 7) build a family of them, indexed by a noise level $\sigma$, out of the
# reverse-direction conditionals.  For two noise levels $s < t$ (in the sampler, $s$ is the
# previous kept step), let
#
# $$
# q_\sigma(x_s \mid x_t, x_0) = \mathcal N\Big(\sqrt{\bar\alpha_s}\,x_0
#   + \sqrt{1-\bar\alpha_s-\sigma^2}\;\frac{x_t - \sqrt{\bar\alpha_t}\,x_0}{\sqrt{1-\bar\alpha_t}},
#   \ \sigma^2 I\Big). \tag{8.4}
# $$
#
# **It keeps the marginals.**  If $x_t \sim q(x_t \mid x_0)$, then
# $(x_t - \sqrt{\bar\alpha_t}\,x_0)/\sqrt{1-\bar\alpha_t} = \epsilon \sim \mathcal N(0, I)$,
# so $x_s = \sqrt{\bar\alpha_s}\,x_0 + \sqrt{1-\bar\alpha_s-\sigma^2}\,\epsilon + \sigma z$ has
# mean $\sqrt{\bar\alpha_s}\,x_0$ and variance $(1-\bar\alpha_s-\sigma^2) + \sigma^2
# = 1-\bar\alpha_s$: exactly $q(x_s \mid x_0)$, for *every* $\sigma^2 \le 1-\bar\alpha_s$.
# Starting from $q(x_T \mid x_0)$ and chaining (8.4) downwards defines a joint
# $q_\sigma(x_{0:T})$, no longer Markov forwards (each $x_s$ depends on $x_0$), whose every
# marginal is (2.4).
#
# **The sampler.**  Replace the unknowns by the network's guesses: $x_0$ by
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}$ (2.5), and
# the noise $(x_t - \sqrt{\bar\alpha_t}\,x_0)/\sqrt{1-\bar\alpha_t}$ by
# $\epsilon_\theta(x_t, t)$ (Song et al., eq. 12):
#
# $$
# x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + \sqrt{1-\bar\alpha_s-\sigma_{t\to s}^2}\;
#   \epsilon_\theta(x_t, t) + \sigma_{t\to s}\,z, \qquad z \sim \mathcal N(0, I), \tag{8.5}
# $$
#
# with the noise chosen by one number $\eta \ge 0$ (Song et al., eq. 16):
#
# $$
# \sigma_{t\to s}(\eta) = \eta\,\sqrt{\frac{1-\bar\alpha_s}{1-\bar\alpha_t}}\,
#   \sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_s}}. \tag{8.6}
# $$
#
# **$\eta = 1$, $s = t-1$ is DDPM.**  Then $\bar\alpha_t/\bar\alpha_{t-1} = \alpha_t$ and
# $\sigma^2 = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t = \tilde\beta_t$ (3.3).  With
# $1-\bar\alpha_{t-1}-\tilde\beta_t = (1-\bar\alpha_{t-1})\frac{\alpha_t - \bar\alpha_t}
# {1-\bar\alpha_t} = \frac{\alpha_t(1-\bar\alpha_{t-1})^2}{1-\bar\alpha_t}$ the coefficient of
# $x_t$ in (8.4) is $\frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}$ and that of
# $x_0$ is $\sqrt{\bar\alpha_{t-1}} - \frac{\alpha_t(1-\bar\alpha_{t-1})\sqrt{\bar\alpha_{t-1}}}
# {1-\bar\alpha_t} = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}$: the DDPM
# posterior (3.4) itself, so (8.5) is one step of Algorithm 2 with
# $\sigma_t^2 = \tilde\beta_t$.
#
# **$\eta = 0$ is a deterministic, invertible map.**  No noise is drawn, and dividing (8.5) by
# $\sqrt{\bar\alpha_s}$ shows what it is.  With $\bar x = x/\sqrt{\bar\alpha}$ and
# $\gamma = \sqrt{1/\bar\alpha - 1}$ (the noise-to-signal ratio),
#
# $$
# \bar x_s = \bar x_t + (\gamma_s - \gamma_t)\,\epsilon_\theta(x_t, t), \tag{8.7}
# $$
#
# one Euler step of the ordinary differential equation
# $\mathrm d\bar x/\mathrm d\gamma = \epsilon_\theta$ (Song et al., eq. 14): the same
# trajectory as the training noise levels, run without randomness.  Run forwards (from $s$ to
# $t > s$, the model evaluated at the point it stands on), it encodes data into noise:
# `ddim_invert`.  The round trip is exact only as the steps shrink, because the forward
# Euler step reads $\epsilon_\theta$ at $x_s$ and the backward one at $x_t$; its error falls
# like the step size.
#
# **Respacing.**  DDIM takes big steps directly through (8.5).  DDPM can too: keep steps
# $t_1 < \dots < t_S$ of the original $T$ and define a new Markov forward process whose $i$-th
# step goes from $t_{i-1}$ to $t_i$ with
#
# $$
# \bar\alpha'_i = \bar\alpha_{t_i}, \qquad \beta'_i = 1 - \frac{\bar\alpha_{t_i}}{\bar\alpha_{t_{i-1}}}
# \quad (\bar\alpha_{t_0} = 1) \tag{8.8}
# $$
#
# (Nichol & Dhariwal 2021, section 4).  The product of the new $\alpha'_i = 1 - \beta'_i$
# telescopes to $\bar\alpha_{t_i}$, so the marginals at the kept steps are unchanged and the
# network trained on the original steps applies, called with the original $t_i$.  This is *not*
# the original betas taken at $t_i$: one new step stands for $t_i - t_{i-1}$ old ones.
#
# Five checks, each against a computation of our own, each able to fail:
#
# * (8.4) keeps the marginals: from $x_t \sim q(x_t \mid x_0)$, one `ddim_step` with the true
#   noise (so $\hat x_0 = x_0$) gives $x_s$ whose Monte Carlo mean and variance are
#   $\sqrt{\bar\alpha_s}\,x_0$ and $1-\bar\alpha_s$, for several $(t, s, \eta)$;
# * (8.6) at $\eta = 1$, $s = t - 1$: `ddim_step`'s variance is $\tilde\beta_t$ and its mean
#   the posterior mean (3.4), both by hand, and `p_mean_variance`'s;
# * (8.7) at $\eta = 0$: `ddim_step` is the Euler step written by hand, and draws no noise;
# * `ddim_invert` then `ddim_sample` returns the data, with an error that falls with the step;
# * (8.8): `respace`'s betas and $\bar\alpha'$ by hand, and one DDPM step of the respaced
#   chain keeps the marginals (Monte Carlo, as the first check).

# %%


def mc_moments_ok(x_s, mean, variance, n):
    """x_s's sample mean and variance within 5 standard errors of the given ones."""
    mean_se, var_se = math.sqrt(variance / n), variance * math.sqrt(2.0 / n)
    return (abs(float(x_s.mean()) - mean) < 5 * mean_se + 1e-12
            and abs(float(x_s.var()) - variance) < 5 * var_se + 1e-12)


def check_ddim_marginals(schedule, n=100_000, seed=6):
    """(8.4): x_t ~ q(x_t | x_0), one ddim_step with the true noise, x_s ~ q(x_s | x_0)?"""
    abar = host(schedule.alphas_cumprod).astype(np.float64)
    rng = np.random.default_rng(seed)
    x0, cases = 0.7, []
    last = len(abar) - 1
    for t, s, eta in ((last, last // 2, 1.0), (last * 3 // 10, last // 10, 1.0),
                      (last * 3 // 10, last // 10, 0.5), (last // 20 + 1, last // 20, 1.0),
                      (last, 0, 0.0)):
        eps, z = rng.standard_normal((2, n, 1))
        x_t = math.sqrt(abar[t]) * x0 + math.sqrt(1.0 - abar[t]) * eps            # (2.4)
        x_s, _, _ = ddim_step(schedule, device(eps), device(x_t), t, s, eta=eta,
                              noise=device(z))
        x_s = host(x_s)
        mean, variance = math.sqrt(abar[s]) * x0, 1.0 - abar[s]
        assert mc_moments_ok(x_s, mean, variance, n), \
            (t, s, eta, float(x_s.mean()), mean, float(x_s.var()), variance)
        cases.append((t, s, eta, float(x_s.var()) / variance))
    return cases


def check_ddim_sigma(schedule, indices=(1, 2, 10, 100, 500, 999)):
    """(8.6) at eta = 1, s = t - 1 against beta~_t and (3.4) by hand and p_mean_variance;
    (8.7) at eta = 0 against the Euler step by hand, and no noise drawn."""
    betas = host(schedule.betas).astype(np.float64)
    abar = np.cumprod(1.0 - betas)                                          # (2.3), by hand
    rng = np.random.default_rng(7)
    for t in (i for i in indices if i < len(betas)):
        x_t, eps, z = rng.standard_normal((3, 4, 3))
        _, mean, variance = ddim_step(schedule, device(eps), device(x_t), t, t - 1, eta=1.0,
                                      noise=device(z))
        beta_tilde = (1.0 - abar[t - 1]) / (1.0 - abar[t]) * betas[t]              # (3.3)
        x0 = (x_t - math.sqrt(1.0 - abar[t]) * eps) / math.sqrt(abar[t])            # (2.5)
        posterior = (math.sqrt(abar[t - 1]) * betas[t] / (1.0 - abar[t]) * x0
                     + math.sqrt(1.0 - betas[t]) * (1.0 - abar[t - 1]) / (1.0 - abar[t]) * x_t)
        np.testing.assert_allclose(variance, beta_tilde, rtol=1e-9)                 # (8.6)
        np.testing.assert_allclose(host(mean), posterior, rtol=1e-8, atol=1e-10)      # (3.4)
        ddpm = p_mean_variance(schedule, device(eps), device(x_t),
                               backend.to_device(np.full(4, t, dtype=np.int64)), clip_x0=False)
        np.testing.assert_allclose(host(mean), host(ddpm["mean"]), rtol=1e-8, atol=1e-10)
        s = t // 3 - 1                                            # a big step, to x_0 when t < 3
        abar_s = 1.0 if s < 0 else abar[s]
        gamma_t, gamma_s = math.sqrt(1 / abar[t] - 1), math.sqrt(1 / abar_s - 1)
        euler = math.sqrt(abar_s) * (x_t / math.sqrt(abar[t]) + (gamma_s - gamma_t) * eps)  # (8.7)
        x_s, _, variance0 = ddim_step(schedule, device(eps), device(x_t), t, s, eta=0.0,
                                      noise=device(z))
        again, _, _ = ddim_step(schedule, device(eps), device(x_t), t, s, eta=0.0,
                                noise=device(-z))
        np.testing.assert_allclose(host(x_s), euler, rtol=1e-8, atol=1e-10)
        assert variance0 == 0.0 and np.array_equal(host(x_s), host(again)), t


def check_ddim_inversion(schedule, model, x0, step_counts=(100, 1000)):
    """ddim_invert then ddim_sample (eta = 0) on the same steps: the largest |x0' - x0| for
    each step count; it must be small at the most steps and fall with the step size."""
    errors = []
    for steps in step_counts:
        x_T = ddim_invert(model, schedule, x0, steps=steps)
        back = ddim_sample(model, schedule, x0.shape, steps=steps, noise=x_T, clip_x0=False)
        errors.append(float(np.abs(host(back) - host(x0)).max()))
    ratio = step_counts[-1] / step_counts[0]
    assert errors[-1] < 0.05 and errors[-1] < errors[0] * 4 / ratio, errors
    return errors


def check_respacing(schedule, steps=10, n=100_000, seed=8):
    """(8.8) by hand against respace; then one DDPM step (fixed_small) of the respaced chain
    from x_{t_i} ~ q(x_{t_i} | x_0), with the true noise, lands on q(x_{t_{i-1}} | x_0)."""
    betas = host(schedule.betas).astype(np.float64)
    abar = np.cumprod(1.0 - betas)                                          # (2.3), by hand
    kept = space_timesteps(len(betas), steps)
    spaced = respace(schedule, kept)
    abar_before = np.concatenate([[1.0], abar[kept][:-1]])
    np.testing.assert_allclose(host(spaced.betas), 1.0 - abar[kept] / abar_before, rtol=1e-9)
    np.testing.assert_allclose(host(spaced.alphas_cumprod), abar[kept], rtol=1e-9)
    assert [int(i) for i in host(spaced.timestep_map)] == kept
    rng = np.random.default_rng(seed)
    x0 = -0.4
    for i in sorted({len(kept) - 1, len(kept) // 2, 1}):
        t, s = kept[i], kept[i - 1]
        eps, z = rng.standard_normal((2, n, 1))
        x_t = math.sqrt(abar[t]) * x0 + math.sqrt(1.0 - abar[t]) * eps
        out = p_mean_variance(spaced, device(eps), device(x_t),
                              backend.to_device(np.full(n, i, dtype=np.int64)), clip_x0=False)
        x_s = host(out["mean"]) + np.sqrt(host(out["variance"])) * z
        assert mc_moments_ok(x_s, math.sqrt(abar[s]) * x0, 1.0 - abar[s], n), (i, t, s)
    return kept, spaced


marginal_cases = check_ddim_marginals(schedule, 20_000 if args.quick else 200_000)
print("(8.4) one ddim_step from x_t ~ q(x_t|x_0) keeps the marginal q(x_s|x_0) (Monte Carlo), "
      "var / (1 - abar_s) for (t, s, eta): " + ", ".join(
          f"({t}, {s}, {eta:g}): {r:.3f}" for t, s, eta, r in marginal_cases))
check_ddim_sigma(schedule)
print("(8.6) eta = 1, s = t - 1: sigma^2 == beta~_t and the mean == posterior mean (3.4) == "
      "p_mean_variance; (8.7) eta = 0 == the Euler step by hand, no noise drawn")
inversion_model = mixture.model(schedule)
md.manual_seed(4)
inversion_x0 = backend.array_of(mixture.sample(200)[0]).astype(xp.float64)
inversion_errors = check_ddim_inversion(schedule, inversion_model, inversion_x0)
print("(8.7) ddim_invert then ddim_sample, mixture data: max |x_0' - x_0| = " + ", ".join(
    f"{e:.4f} at {k} steps" for e, k in zip(inversion_errors, (100, 1000))))
kept, spaced = check_respacing(schedule, 10, 20_000 if args.quick else 200_000)
wrong_abar = np.cumprod(1.0 - host(schedule.betas)[kept])
print(f"(8.8) respace to {len(kept)} steps: beta' == 1 - abar_t_i / abar_t_(i-1), abar' == abar at "
      f"the kept steps, one respaced DDPM step keeps the marginals; the original betas at the "
      f"kept steps would end at abar = {wrong_abar[-1]:.3f} instead of "
      f"{float(host(schedule.alphas_cumprod)[-1]):.1e}")

# %% [markdown]
# The two samplers' paths, from the same $x_T$ on the mixture of section 3 (exact network):
# DDPM's are rough (fresh noise at every step), DDIM's with $\eta = 0$ are smooth curves of
# (8.7), and both end in the three components.  Beside them, respacing's $\beta'$ against the
# original $\beta$ at the kept steps.

# %%
plt = pyplot()   # None without matplotlib: the figures are then skipped
if plt is not None:
    paths = 40
    md.manual_seed(9)
    x_T = backend.randn(paths, 1, dtype="float64")
    _, ddpm_frames = ddpm_sample(inversion_model, schedule, (paths, 1), noise=x_T, clip_x0=False,
                                 return_frames=True, frame_every=10)
    _, ddim_frames = ddim_sample(inversion_model, schedule, (paths, 1), steps=50, noise=x_T,
                                 clip_x0=False, return_frames=True)
    ddpm_t = [T] + [T - 10 * (k + 1) for k in range(len(ddpm_frames) - 1)]
    ddim_t = [T] + [t + 1 for t in reversed(space_timesteps(T, 50))][1:] + [0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, frames, ts, title in ((axes[0], ddpm_frames, ddpm_t, "DDPM, 1000 steps (3.7)"),
                                  (axes[1], ddim_frames, ddim_t, "DDIM eta = 0, 50 steps (8.7)")):
        ax.plot(ts[:len(frames)], np.concatenate([host(f) for f in frames], axis=1).T,
                lw=0.6, alpha=0.7)
        ax.invert_xaxis()
        ax.set(title=title, xlabel="t (from T down to 0)", ylabel="x_t", ylim=(-3, 3))
    axes[2].semilogy(kept, host(spaced.betas), "o-", label="respaced beta' (8.8)")
    axes[2].semilogy(kept, host(schedule.betas)[kept], "s--", label="original beta at t_i")
    axes[2].set(title=f"respacing to {len(kept)} steps", xlabel="kept step t_i")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out_dir / "08_ddim.png", dpi=100)
    plt.close(fig)
    print(f"figure written to {out_dir / '08_ddim.png'}")

# %% [markdown]
# ## 5. A trained network (when a checkpoint is shipped)
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
    print(f"no checkpoint at {args.checkpoint}: section 5 skipped (run `minidiff train`)")

# %% [markdown]
# ## 6. The speed problem
#
# Every sampling step is one full network evaluation.  We time one no-grad forward pass of a
# U-Net at growing image sizes (attention at a quarter of the size, as in the reference) and
# multiply by the number of steps: $T = 1000$ DDPM steps against 50 DDIM steps.  The cost grows
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
# ## A figure: samples against steps, and the cost
#
# Left, section 2's Gaussian data sampled by DDPM with 2 and with 1000 steps; then section 2's
# table drawn (the error of the samples' spread against the number of steps); the time per
# batch of section 6; section 3's mixture sampled by DDPM and by a single DDIM step.

# %%
if plt is not None:
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    md.manual_seed(2)
    few = ddpm_sample(gaussian_eps, schedule, (2000, 2), steps=step_counts[0], clip_x0=False)
    md.manual_seed(2)
    many = ddpm_sample(gaussian_eps, schedule, (2000, 2), steps=step_counts[-1], clip_x0=False)
    axes[0].scatter(*host(many).T, s=2, alpha=0.5, label=f"DDPM {step_counts[-1]} steps")
    axes[0].scatter(*host(few).T, s=2, alpha=0.5, label=f"DDPM {step_counts[0]} steps")
    axes[0].add_patch(plt.Circle(tuple(host(mu)[0]), 2 * s_data, fill=False, color="k"))
    axes[0].set(title="N(mu, rho^2) data, exact eps (circle: 2 rho)", aspect="equal")
    axes[0].legend(fontsize=7)
    rows = np.array(table)
    axes[1].plot(rows[:, 0], rows[:, 2] + 1e-4, "o-", label="DDPM")
    axes[1].plot(rows[:, 0], rows[:, 4] + 1e-4, "s-", label="DDIM (eta=0)")
    axes[1].set(xscale="log", yscale="log", xlabel="steps", ylabel="|std - rho|",
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
# * (3.7) Algorithm 2 is the posterior mean (3.4) at the predicted $x_0$ plus $\sigma_t z$, with
#   no noise at the last step ($\tilde\beta_1 = 0$); by hand and in the library, state by state.
# * (8.1)-(8.3) The exact $\epsilon$ of any Gaussian mixture is $-\sqrt{1-\bar\alpha_t}$ times
#   the score of $q(x_t)$, a responsibility-weighted sum: with it every sampler puts the right
#   mass on each component, while a single step collapses onto the mean.
# * (8.4)-(8.6) DDIM reverses a non-Markovian process with DDPM's marginals, so the same network
#   serves it; $\eta = 1$ with single steps is DDPM, $\eta = 0$ (8.7) a deterministic Euler
#   step of an ODE that can be run backwards to encode data.  Respacing (8.8) lets DDPM take
#   big steps too, with betas re-derived from $\bar\alpha$.  DDIM ($\eta = 0$) reaches the
#   data in far fewer steps than ancestral DDPM.
# * Each step costs one U-Net pass, and that cost grows with the pixel count: 1000 of them
#   per sample is the price DDIM, distillation and latent diffusion all attack.

# %%
print("lesson 08: all checks passed")
