# %% [markdown]
# # Lesson 02 — The closed form: jumping to any $x_t$ in one step
#
# Training picks a random step $t$ for every example.  Running (1.2) $t$ times for each would
# cost $O(T)$ per example; this lesson shows that $q(x_t \mid x_0)$ is a Gaussian we can
# sample directly, and introduces the quantities every later lesson uses.
#
# Sections:
#
# 1. The reparameterization trick, eq. (2.1)
# 2. Expanding the recursion two steps, eq. (2.2)
# 3. Two Gaussians make one, eq. (2.3) — in full
# 4. The closed form and sampling any $x_t$ in one step, eq. (2.4); $x_0$ from noise, eq. (2.5)
# 5. The velocity $v$ and the signal-to-noise ratio, eq. (2.6) and (2.7)
# 6. Schedules: linear, cosine, scaled linear, eq. (2.8)-(2.10); a figure
#
# ```
# python lessons/02_closed_form.py [--quick] [--out DIR]
# ```

# %%
import math

from _lesson import lesson_parser, pyplot, show, start  # finds minidiff; --quick, --out
import minidiff as md
from minidiff import backend
from minidiff.diffusion import (NoiseSchedule, predict_eps_from_v, predict_v, predict_x0_from_eps,
                                predict_x0_from_v, q_sample)

np = backend.host

args, out_dir = start(lesson_parser("Lesson 02: the closed form of q(x_t | x_0)", "a fast pass (fewer samples)"), dtype="float64")
N = 20000 if args.quick else 200000


def randn(*shape):
    return backend.to_host(backend.randn(*shape))


# %% [markdown]
# ## 1. The reparameterization trick
#
# A sample $z \sim \mathcal{N}(\mu, \sigma^2)$ can be written as a deterministic function of a
# standard normal:
#
# $$
# z = \mu + \sigma \epsilon, \qquad \epsilon \sim \mathcal{N}(0, 1).
# \tag{2.1}
# $$
#
# This moves the randomness into $\epsilon$, which does not depend on $\mu$ or $\sigma$ — the
# trick that lets gradients flow through samples in a VAE, and here the trick that lets us
# *add* Gaussian steps by adding their $\epsilon$.  Step (1.2) is (2.1) with
# $\mu = \sqrt{\alpha_t}\, x_{t-1}$, $\sigma = \sqrt{\beta_t}$.
#
# That (2.1) draws from $\mathcal{N}(\mu, \sigma^2)$ is its definition; what it buys is checked
# instead: the gradient of an expectation can be taken *through the samples*,
# $\frac{\partial}{\partial\sigma}\mathbb{E}[f(z)] = \mathbb{E}[f'(z)\,\epsilon]$.  For
# $f(z) = z^2$, $\mathbb{E}[z^2] = \mu^2 + \sigma^2$, so the average of the gradients that
# autograd (lesson 00) finds through $z = \mu + \sigma\epsilon$ must be $(2\mu, 2\sigma)$.

# %%
mu, sigma = md.tensor(0.7, requires_grad=True), md.tensor(0.3, requires_grad=True)
z = mu + sigma * md.tensor(randn(N))                                                # (2.1)
(z * z).mean().backward()
show("pathwise d/dmu, d/dsigma E[z^2] (2.1)",
     (round(float(mu.grad), 4), round(float(sigma.grad), 4)))
show("exact 2 mu, 2 sigma", (1.4, 0.6))
z = backend.to_host(z.data)
eps_drawn = (z - 0.7) / 0.3
assert abs(float(mu.grad) - 1.4) < 5 * (2 * z).std() / math.sqrt(N), "(2.1): d/dmu"
assert abs(float(sigma.grad) - 0.6) < 5 * (2 * z * eps_drawn).std() / math.sqrt(N), \
    "(2.1): d/dsigma"

# %% [markdown]
# ## 2. Two steps of the recursion
#
# Write the step (1.2) for $t$ (noise $\epsilon_2$) and for $t-1$ (noise $\epsilon_1$,
# independent of $\epsilon_2$) and substitute the second into the first:
#
# $$
# \begin{aligned}
# x_t &= \sqrt{\alpha_t}\, x_{t-1} + \sqrt{1 - \alpha_t}\, \epsilon_2 \\
#     &= \sqrt{\alpha_t}\big(\sqrt{\alpha_{t-1}}\, x_{t-2} + \sqrt{1 - \alpha_{t-1}}\, \epsilon_1\big)
#        + \sqrt{1 - \alpha_t}\, \epsilon_2 \\
#     &= \sqrt{\alpha_t \alpha_{t-1}}\, x_{t-2}
#        + \Big[\sqrt{\alpha_t (1 - \alpha_{t-1})}\, \epsilon_1 + \sqrt{1 - \alpha_t}\, \epsilon_2\Big]
# \end{aligned}
# \tag{2.2}
# $$
#
# with $\alpha_t = 1 - \beta_t$.  The bracket is a sum of two independent zero-mean Gaussians.
#
# ## 3. Two Gaussians make one
#
# Claim: $\sqrt{\alpha_t (1 - \alpha_{t-1})}\, \epsilon_1 + \sqrt{1 - \alpha_t}\, \epsilon_2
# \sim \mathcal{N}(0, 1 - \alpha_t \alpha_{t-1})$.
#
# *It is Gaussian.*  Independent Gaussians are jointly Gaussian, and a linear combination of a
# jointly Gaussian vector is Gaussian.  (Directly: the characteristic function of $c\,\epsilon$
# is $e^{-c^2 u^2 / 2}$; for independent terms characteristic functions multiply, giving
# $e^{-(c_1^2 + c_2^2) u^2 / 2}$, the characteristic function of $\mathcal{N}(0, c_1^2 + c_2^2)$.)
#
# *Its mean* is $c_1 \mathbb{E}[\epsilon_1] + c_2 \mathbb{E}[\epsilon_2] = 0$.
#
# *Its variance*: variances of independent terms add, $\operatorname{Var}(c\,\epsilon) = c^2$, so
#
# $$
# \alpha_t (1 - \alpha_{t-1}) + (1 - \alpha_t) = \alpha_t - \alpha_t \alpha_{t-1} + 1 - \alpha_t
#   = 1 - \alpha_t \alpha_{t-1} .
# \tag{2.3}
# $$
#
# So $x_t = \sqrt{\alpha_t \alpha_{t-1}}\, x_{t-2} + \sqrt{1 - \alpha_t \alpha_{t-1}}\, \epsilon$
# with a single $\epsilon \sim \mathcal{N}(0, 1)$: two steps are one step with
# $\alpha = \alpha_t \alpha_{t-1}$.  Check by Monte Carlo: compare both ways.

# %%
a_t, a_prev = 0.9, 0.8
eps1, eps2 = randn(N), randn(N)
merged = math.sqrt(a_t * (1 - a_prev)) * eps1 + math.sqrt(1 - a_t) * eps2
show("var of the two-noise sum, vs 1 - a_t a_{t-1} (2.3)",
     (round(float(merged.var()), 4), round(1 - a_t * a_prev, 4)))
assert abs(merged.var() - (1 - a_t * a_prev)) < 6 * (1 - a_t * a_prev) * math.sqrt(2 / N), "(2.3)"
# Gaussian: the fourth moment is 3 var^2 (excess kurtosis 0)
kurtosis = float((merged ** 4).mean() / merged.var() ** 2)
show("kurtosis (3 for a Gaussian)", round(kurtosis, 3))
assert abs(kurtosis - 3) < 30 / math.sqrt(N)

# %% [markdown]
# ## 4. The closed form
#
# Repeating the merge down to $x_0$ (induction on $t$: the merged step from $x_0$ to $x_{t-1}$
# has $\alpha = \bar\alpha_{t-1}$; merging with step $t$ gives
# $\bar\alpha_{t-1} \alpha_t = \bar\alpha_t$):
#
# $$
# q(x_t \mid x_0) = \mathcal{N}\big(x_t;\, \sqrt{\bar\alpha_t}\, x_0,\, (1 - \bar\alpha_t) I\big),
# \qquad
# x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon, \quad
# \epsilon \sim \mathcal{N}(0, I).
# \tag{2.4}
# $$
#
# This is `minidiff.diffusion.q_sample(schedule, x0, t, eps)`; `t` is a vector (one step per
# item, 0-based: index $t$ is the paper's step $t + 1$).  Knowing $\epsilon$ and $x_t$, (2.4)
# solves for $x_0$:
#
# $$
# x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\, \epsilon}{\sqrt{\bar\alpha_t}}
# \tag{2.5}
# $$
#
# — `predict_x0_from_eps`, how a noise-predicting network yields a guess of the clean data.
#
# Check: the chain run step by step (1.2) and `q_sample` give the same distribution at
# $t = 400$.

# %%
schedule = NoiseSchedule.linear(1000)
betas = backend.to_host(schedule.betas)
x0 = np.full((N, 1), 0.6)
chain = x0.copy()
for beta in betas[:400]:
    chain = math.sqrt(1 - beta) * chain + math.sqrt(beta) * randn(N, 1)
t = np.full(N, 399)  # index 399 = step 400
eps = randn(N, 1)
direct = backend.to_host(q_sample(schedule, backend.to_device(x0), backend.to_device(t),
                                  backend.to_device(eps)))
abar = float(backend.to_host(schedule.alphas_cumprod)[399])
show("chain vs one-step mean at t=400 (2.4)", (round(float(chain.mean()), 4),
                                              round(float(direct.mean()), 4)))
show("chain vs one-step var", (round(float(chain.var()), 4), round(float(direct.var()), 4)))
se_m, se_v = math.sqrt(2 * (1 - abar) / N), (1 - abar) * math.sqrt(4 / N)
assert abs(chain.mean() - direct.mean()) < 5 * se_m, "(2.4) mean"
assert abs(chain.var() - direct.var()) < 5 * se_v, "(2.4) variance"
assert abs(direct.mean() - math.sqrt(abar) * 0.6) < 5 * math.sqrt((1 - abar) / N)
back = backend.to_host(predict_x0_from_eps(schedule, backend.to_device(direct),
                                           backend.to_device(t), backend.to_device(eps)))
assert np.allclose(back, x0, atol=1e-10), "(2.5)"
show("x_0 recovered from (x_t, eps) (2.5)", bool(np.allclose(back, x0, atol=1e-10)))

# %% [markdown]
# ## 5. Velocity and signal-to-noise ratio
#
# Since $\bar\alpha_t + (1 - \bar\alpha_t) = 1$, put $\cos\phi_t = \sqrt{\bar\alpha_t}$ and
# $\sin\phi_t = \sqrt{1 - \bar\alpha_t}$: (2.4) is $x_t = \cos\phi\, x_0 + \sin\phi\, \epsilon$,
# a point on a circle in the $(x_0, \epsilon)$ plane.  The *velocity* is the direction along
# that circle:
#
# $$
# v = \frac{d x_t}{d\phi} = \sqrt{\bar\alpha_t}\, \epsilon - \sqrt{1 - \bar\alpha_t}\, x_0,
# \qquad
# x_0 = \sqrt{\bar\alpha_t}\, x_t - \sqrt{1 - \bar\alpha_t}\, v,
# \qquad
# \epsilon = \sqrt{1 - \bar\alpha_t}\, x_t + \sqrt{\bar\alpha_t}\, v
# \tag{2.6}
# $$
#
# (a rotation, so $\lVert x_t \rVert^2 + \lVert v \rVert^2 = \lVert x_0 \rVert^2 + \lVert \epsilon \rVert^2$).
# Networks may predict $\epsilon$, $x_0$ or $v$: all three carry the same information given
# $x_t$ (lesson 04, (4.11), compares their losses).  How much signal is left at step $t$:
#
# $$
# \mathrm{snr}_t = \frac{\bar\alpha_t}{1 - \bar\alpha_t}
#   = \frac{(\text{mean of } x_t \mid x_0)^2 / x_0^2}{\operatorname{Var}[x_t \mid x_0]}
# \tag{2.7}
# $$
#
# which falls from about $10^4$ to $4 \cdot 10^{-5}$ over the paper's schedule.  The checks:
# $v$ from `predict_v` is the derivative $d x_t / d\phi$ by central differences (lesson 00,
# (0.4)); the conversions of (2.6) invert each other; and the library's `snr` is the ratio of
# the squared mean to the variance measured on the chain of section 4.

# %%
rng_x0 = randn(8, 3)
rng_eps = randn(8, 3)
tt = backend.to_device(np.arange(0, 1000, 125))
dx0, deps = backend.to_device(rng_x0), backend.to_device(rng_eps)
x_t = q_sample(schedule, dx0, tt, deps)
v = predict_v(schedule, dx0, tt, deps)
lengths = backend.to_host(x_t ** 2 + v ** 2 - dx0 ** 2 - deps ** 2)
assert np.abs(lengths).max() < 1e-10
phi = np.arccos(np.sqrt(backend.to_host(schedule.alphas_cumprod)[backend.to_host(tt)]))[:, None]
h = 1e-6
derivative = ((np.cos(phi + h) - np.cos(phi - h)) * rng_x0
              + (np.sin(phi + h) - np.sin(phi - h)) * rng_eps) / (2 * h)           # d x_t / d phi
show("max |predict_v - d x_t/d phi| (2.6)", f"{np.abs(backend.to_host(v) - derivative).max():.1e}")
assert np.allclose(backend.to_host(v), derivative, atol=1e-8), "(2.6): v = d x_t / d phi"
assert np.allclose(backend.to_host(predict_x0_from_v(schedule, x_t, tt, v)), rng_x0, atol=1e-10)
assert np.allclose(backend.to_host(predict_eps_from_v(schedule, x_t, tt, v)), rng_eps, atol=1e-10)
snr = backend.to_host(schedule.snr)
show("rotation keeps lengths (2.6)", True)
show("snr at steps 1 and T (2.7)", (f"{snr[0]:.3g}", f"{snr[-1]:.3g}"))
measured = float(chain.mean() ** 2 / 0.6 ** 2 / chain.var())   # the chain at step 400
se_snr = measured * math.sqrt((2 * se_m / abs(chain.mean())) ** 2 + 2 / N)
show("snr at step 400: chain mean^2/x_0^2/var, and (2.7)",
     (round(measured, 4), round(float(snr[399]), 4)))
assert abs(measured - snr[399]) < 5 * se_snr, "(2.7) against the chain"

# %% [markdown]
# ## 6. Schedules
#
# Linear (Ho et al. 2020): $\beta_t$ evenly spaced in $[10^{-4}, 0.02]$,
#
# $$
# \beta_t = \beta_1 + \frac{t - 1}{T - 1}(\beta_T - \beta_1).
# \tag{2.8}
# $$
#
# Cosine (Nichol & Dhariwal 2021), defined through $\bar\alpha$, with offset $s = 0.008$:
#
# $$
# \bar\alpha_t = \frac{f(t)}{f(0)}, \quad
# f(t) = \cos^2\Big(\frac{t/T + s}{1 + s} \cdot \frac{\pi}{2}\Big), \quad
# \beta_t = \min\Big(1 - \frac{\bar\alpha_t}{\bar\alpha_{t-1}},\, 0.999\Big).
# \tag{2.9}
# $$
#
# Scaled linear (latent diffusion, Rombach et al. 2022): $\sqrt{\beta_t}$ evenly spaced,
#
# $$
# \sqrt{\beta_t} = \sqrt{0.00085} + \frac{t - 1}{T - 1}\big(\sqrt{0.012} - \sqrt{0.00085}\big).
# \tag{2.10}
# $$
#
# The linear schedule destroys information fast: $\log \mathrm{snr}_t$ is already negative by
# $t \approx 260$ and the last third of the steps see almost pure noise.  The cosine schedule
# spends its steps more evenly in $\log \mathrm{snr}$.  Its two constants have reasons.  The
# offset $s$: without it $\beta_1$ would be tiny ($s = 0$ gives
# $\beta_1 = \sin^2(\pi / 2T) \approx 2.5 \cdot 10^{-6}$), noise far below what an 8-bit
# image can show, steps the network cannot learn anything from; Nichol & Dhariwal chose $s$ so
# that $\sqrt{\beta_1}$ is just below the bin width $1/127.5$ of pixels scaled to $[-1, 1]$.
# The clip at $0.999$: $f(T) = \cos^2(\pi/2) = 0$ makes the last $\beta$ exactly 1
# ($\bar\alpha_T = 0$, $\mathrm{snr}_T = 0$, and (2.5) divides by zero); clipping keeps
# $\bar\alpha_T > 0$, at the price that $\bar\alpha_t$ no longer equals $f(t)/f(0)$ on the
# last steps, where the clip is active.  Checks: each schedule against its formula written out
# here, and those two facts.

# %%
cosine = NoiseSchedule.cosine(1000)
scaled = NoiseSchedule.scaled_linear(1000)
T_ = 1000
steps = np.arange(1, T_ + 1)
linear_by_hand = 1e-4 + (steps - 1) / (T_ - 1) * (0.02 - 1e-4)                          # (2.8)
assert np.allclose(backend.to_host(schedule.betas), linear_by_hand, rtol=1e-12), "(2.8)"
f = np.cos(((np.arange(T_ + 1) / T_) + 0.008) / 1.008 * math.pi / 2) ** 2
cos_abar = backend.to_host(cosine.alphas_cumprod)
cos_betas = np.minimum(1 - f[1:] / f[:-1], 0.999)                                      # (2.9)
assert np.allclose(backend.to_host(cosine.betas), cos_betas, rtol=1e-10), "(2.9) betas"
unclipped = 1 - f[1:] / f[:-1] <= 0.999
assert np.allclose(cos_abar[unclipped], (f[1:] / f[0])[unclipped], rtol=1e-9), "(2.9) abar"
scaled_by_hand = (math.sqrt(0.00085) + (steps - 1) / (T_ - 1)
                  * (math.sqrt(0.012) - math.sqrt(0.00085))) ** 2                       # (2.10)
assert np.allclose(backend.to_host(scaled.betas), scaled_by_hand, rtol=1e-12), "(2.10)"
sqrt_beta_1 = math.sqrt(float(backend.to_host(cosine.betas)[0]))
show("cosine: sqrt(beta_1), the bin width 1/127.5", (round(sqrt_beta_1, 5), round(1 / 127.5, 5)))
assert sqrt_beta_1 < 1 / 127.5
no_offset = 1 - math.cos(1 / 1000 * math.pi / 2) ** 2      # (2.9) with s = 0, by hand
show("cosine with s = 0: beta_1, and sin^2(pi / 2T)", (f"{no_offset:.3g}",
                                                      f"{math.sin(math.pi / 2000) ** 2:.3g}"))
show("cosine: steps where the 0.999 clip acts", [int(k) for k in steps[~unclipped]])
show("cosine: abar_T, and f(T)/f(0)", (f"{cos_abar[-1]:.2g}", f"{f[-1] / f[0]:.2g}"))
assert cos_abar[-1] > 0 and f[-1] / f[0] < 1e-30
show("alphabar_T: linear, cosine, scaled linear", tuple(
    f"{float(backend.to_host(s.alphas_cumprod)[-1]):.2g}" for s in (schedule, cosine, scaled)))

plt = pyplot()   # None without matplotlib: the figures are then skipped
if plt is not None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    bins = np.linspace(-4, 4, 80)
    axes[0].hist(chain[:, 0], bins=bins, density=True, alpha=0.5, label="400 steps of (1.2)")
    axes[0].hist(direct[:, 0], bins=bins, density=True, alpha=0.5, label="one step of (2.4)")
    axes[0].set_title("x_400 | x_0 = 0.6, two ways")
    axes[0].legend(fontsize=8)
    for s_, label in ((schedule, "linear (2.8)"), (cosine, "cosine (2.9)"),
                      (scaled, "scaled linear (2.10)")):
        axes[1].plot(backend.to_host(s_.alphas_cumprod), label=label)
        axes[2].plot(np.log(backend.to_host(s_.snr)), label=label)
    axes[1].set_title("alphabar_t")
    axes[2].set_title("log snr_t (2.7)")
    for ax in axes[1:]:
        ax.set_xlabel("index t (= step t+1)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    figure = out_dir / "02_closed_form.png"
    fig.savefig(figure, dpi=100)
    plt.close(fig)
    show("figure", figure)
    assert figure.stat().st_size > 0

print("lesson 02: all checks passed")
