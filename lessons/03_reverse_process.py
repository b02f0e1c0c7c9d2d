# %% [markdown]
# # Lesson 03 — The reverse process
#
# To generate data we run the forward chain backwards: draw $x_T \sim \mathcal{N}(0, I)$, then
# $x_{T-1}$ from $q(x_{T-1} \mid x_T)$, and so on.  This lesson shows why
# $q(x_{t-1} \mid x_t)$ is out of reach for real data, computes it anyway for a toy data set of
# three points, derives the posterior $q(x_{t-1} \mid x_t, x_0)$ that *is* tractable, and
# builds the model's reverse step from it.
#
# Sections:
#
# 1. Bayes' rule for $q(x_{t-1} \mid x_t)$, and why it is intractable, eq. (3.1)
# 2. A toy data set where it is computable: a mixture of posteriors, eq. (3.2); why a small
#    step makes it nearly Gaussian
# 3. The posterior $q(x_{t-1} \mid x_t, x_0)$ by completing the square, eq. (3.3) and (3.4)
# 4. The model $p_\theta(x_{t-1} \mid x_t)$, its variance and its $\epsilon$-parameterized
#    mean, (3.5)-(3.7)
# 5. Sampling (Algorithm 2) with the exact noise predictor of the toy data; a figure
#
# ```
# python lessons/03_reverse_process.py [--quick] [--out DIR]
# ```

# %%
import math

from _lesson import host, lesson_parser, pyplot, show, start  # finds minidiff; --quick, --out
from minidiff import backend
from minidiff.diffusion import NoiseSchedule, ddpm_sample, p_mean_variance, q_posterior

np = backend.host
trapezoid = getattr(np, "trapezoid", None) or np.trapz  # NumPy 2 renamed trapz

args, out_dir = start(lesson_parser("Lesson 03: the reverse process", "a fast pass (fewer samples)"), dtype="float64")


def normal_pdf(x, mean, var):
    return np.exp(-0.5 * (x - mean) ** 2 / var) / np.sqrt(2 * math.pi * var)


def dev(a):
    return backend.to_device(np.asarray(a, dtype=np.float64))


# %% [markdown]
# ## 1. Bayes' rule, and the catch
#
# The reverse conditional follows from Bayes' rule,
#
# $$
# q(x_{t-1} \mid x_t) = \frac{q(x_t \mid x_{t-1})\, q(x_{t-1})}{q(x_t)},
# \qquad
# q(x_{t-1}) = \int q(x_{t-1} \mid x_0)\, p_{\text{data}}(x_0)\, dx_0 .
# \tag{3.1}
# $$
#
# The first factor is the known step (1.1), but the marginal $q(x_{t-1})$ averages over the
# whole data distribution: for images that is an integral over every possible image.  That is
# what we cannot compute, and what the network will learn to approximate.
#
# ## 2. A data set of three points
#
# If $p_{\text{data}}$ puts weight $\pi_k$ on a few points $c_k$, the integral is a finite sum.
# Writing $q(x_{t-1})\, q(x_t \mid x_{t-1}) = \sum_k \pi_k\, q(x_{t-1} \mid c_k)\, q(x_t \mid x_{t-1})$
# and using the posterior of section 3 on each term,
#
# $$
# q(x_{t-1} \mid x_t) = \sum_k w_k(x_t)\, q(x_{t-1} \mid x_t, x_0 = c_k),
# \qquad
# w_k(x_t) = \frac{\pi_k\, \mathcal{N}(x_t; \sqrt{\bar\alpha_t}\, c_k, 1 - \bar\alpha_t)}
#                 {\sum_j \pi_j\, \mathcal{N}(x_t; \sqrt{\bar\alpha_t}\, c_j, 1 - \bar\alpha_t)}
# \tag{3.2}
# $$
#
# — a mixture of Gaussians, one per data point, weighted by how likely each point is to have
# produced $x_t$.  We use a coarse schedule ($T = 10$, large betas) to make its departure from
# a Gaussian visible, and check (3.2) against a direct numerical evaluation of (3.1) on a grid.

# %%
points = np.array([-0.8, 0.1, 0.7])
weights = np.array([0.3, 0.3, 0.4])
coarse = NoiseSchedule.linear(10, 0.02, 0.4)
index, x_t = 1, 0.4  # index 1 = the paper's step 2: q(x_1 | x_2 = 0.4)
abar = host(coarse.alphas_cumprod)
betas = host(coarse.betas)
abar_prev = abar[index - 1]

grid = np.linspace(-4, 4, 40001)
marginal_prev = sum(w * normal_pdf(grid, math.sqrt(abar_prev) * c, 1 - abar_prev)
                    for w, c in zip(weights, points))
bayes = normal_pdf(x_t, math.sqrt(1 - betas[index]) * grid, betas[index]) * marginal_prev
bayes /= trapezoid(bayes, grid)  # dividing by q(x_t)                               (3.1)

resp = weights * normal_pdf(x_t, np.sqrt(abar[index]) * points, 1 - abar[index])
resp /= resp.sum()
means, var, _ = q_posterior(coarse, dev(points[:, None]), dev(np.full((3, 1), x_t)),
                            dev(np.full(3, index)))
means, var = host(means)[:, 0], float(host(var)[0, 0])
mixture = sum(w * normal_pdf(grid, m, var) for w, m in zip(resp, means))           # (3.2)
show("max |grid Bayes (3.1) - mixture (3.2)|", f"{np.abs(bayes - mixture).max():.2e}")
assert np.abs(bayes - mixture).max() < 1e-6, "(3.2) against Bayes (3.1) on the grid"
mix_mean = float(resp @ means)
mix_var = float(resp @ (var + means ** 2) - mix_mean ** 2)
show("responsibilities w_k(x_t)", np.round(resp, 3))

# %% [markdown]
# **Why a Gaussian reverse step works when $\beta_t$ is small.**  It is not that the weights
# $w_k$ single out one data point: at large $t$ they are spread over all of them.  It is the
# sizes in (3.2).  By (3.4) the components' means $\tilde\mu_t(x_t, c_k)$ differ only through
# the coefficient of $x_0$, $\frac{\beta_t \sqrt{\bar\alpha_{t-1}}}{1 - \bar\alpha_t}$, while each
# component has standard deviation $\sqrt{\tilde\beta_t}$ (3.3).  Their ratio, for two data
# points $c_j$ and $c_k$, is
#
# $$
# \frac{|\tilde\mu_t(x_t, c_j) - \tilde\mu_t(x_t, c_k)|}{\sqrt{\tilde\beta_t}}
#   = \sqrt{\beta_t}\, \frac{\sqrt{\bar\alpha_{t-1}}\, |c_j - c_k|}
#                          {\sqrt{(1 - \bar\alpha_t)(1 - \bar\alpha_{t-1})}} ,
# $$
#
# of order $\sqrt{\beta_t}$ at a given noise level: for small $\beta_t$ the components overlap
# almost completely, and a mixture of nearly coincident Gaussians is nearly Gaussian.  (On the
# first steps, where $1 - \bar\alpha_{t-1}$ is itself tiny, the ratio is large, but there $x_t$
# pins down $x_0$ and the weights do concentrate on one point.)
# Said without the mixture (Feller 1949; Sohl-Dickstein et al. 2015): the factor
# $q(x_t \mid x_{t-1})$ of (3.1) confines $x_{t-1}$ to a window of width $O(\sqrt{\beta_t})$
# around $x_t$, across which $\log q(x_{t-1})$ is a straight line up to $O(\beta_t)$; a
# Gaussian times $e^{\text{linear}}$ is Gaussian.  Check on the toy data: the total-variation
# distance between the true reverse step (3.1) and its moment-matched Gaussian falls at least
# in proportion to $\beta_t$ (measured: like $\beta_t^{3/2}$) as $\beta_t$ is halved, with
# $\bar\alpha_{t-1}$ and $x_t$ held fixed.

# %%
def reverse_step_tv(beta, abar_before=0.9, x_now=0.4):
    """TV distance between q(x_{t-1} | x_t) by Bayes on the grid (3.1) and its
    moment-matched Gaussian, for a step of variance beta after abar_{t-1} = abar_before."""
    before = sum(w * normal_pdf(grid, math.sqrt(abar_before) * c, 1 - abar_before)
                 for w, c in zip(weights, points))
    step = normal_pdf(x_now, math.sqrt(1 - beta) * grid, beta) * before
    step /= trapezoid(step, grid)
    m = trapezoid(grid * step, grid)
    v = trapezoid((grid - m) ** 2 * step, grid)
    return 0.5 * trapezoid(np.abs(step - normal_pdf(grid, m, v)), grid)


step_betas = np.array([0.2, 0.1, 0.05, 0.025, 0.0125])
tvs = np.array([reverse_step_tv(b) for b in step_betas])
show("beta_t", step_betas)
show("TV(reverse step, its Gaussian)", np.round(tvs, 5))
show("log2 of TV ratio per halving of beta_t", np.round(np.log2(tvs[:-1] / tvs[1:]), 2))
assert (np.log2(tvs[:-1] / tvs[1:]) > 1).all()   # at least linear in beta_t

# %% [markdown]
# ## 3. The posterior given x_0, by completing the square
#
# Conditioning on $x_0$ as well removes the integral: by Bayes and the Markov property,
#
# $$
# q(x_{t-1} \mid x_t, x_0) = \frac{q(x_t \mid x_{t-1})\, q(x_{t-1} \mid x_0)}{q(x_t \mid x_0)} .
# $$
#
# All three are Gaussians we know ((1.1) and (2.4)).  Keep only what depends on $y = x_{t-1}$:
#
# $$
# \begin{aligned}
# \log q &= -\frac{1}{2}\left[\frac{(x_t - \sqrt{\alpha_t}\, y)^2}{\beta_t}
#            + \frac{(y - \sqrt{\bar\alpha_{t-1}}\, x_0)^2}{1 - \bar\alpha_{t-1}}\right] \\
#         &= -\frac{1}{2}\left[\Big(\frac{\alpha_t}{\beta_t} + \frac{1}{1 - \bar\alpha_{t-1}}\Big) y^2
#            - 2\Big(\frac{\sqrt{\alpha_t}\, x_t}{\beta_t}
#            + \frac{\sqrt{\bar\alpha_{t-1}}\, x_0}{1 - \bar\alpha_{t-1}}\Big) y\right] + C .
# \end{aligned}
# $$
#
# A quadratic $-\frac12 (A y^2 - 2 B y)$ is $-\frac{(y - B/A)^2}{2/A} + C'$: a Gaussian with
# variance $1/A$ and mean $B/A$.  With $\alpha_t = 1 - \beta_t$ and
# $\bar\alpha_t = \alpha_t \bar\alpha_{t-1}$,
# $A = \frac{\alpha_t (1 - \bar\alpha_{t-1}) + \beta_t}{\beta_t (1 - \bar\alpha_{t-1})}
#    = \frac{1 - \bar\alpha_t}{\beta_t (1 - \bar\alpha_{t-1})}$, so
#
# $$
# \tilde\beta_t = \frac{1}{A} = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\, \beta_t ,
# \tag{3.3}
# $$
#
# $$
# \tilde\mu_t(x_t, x_0) = \frac{B}{A}
#   = \frac{\beta_t \sqrt{\bar\alpha_{t-1}}}{1 - \bar\alpha_t}\, x_0
#   + \frac{(1 - \bar\alpha_{t-1}) \sqrt{\alpha_t}}{1 - \bar\alpha_t}\, x_t .
# \tag{3.4}
# $$
#
# The two fractions are `posterior_mean_coef1` and `posterior_mean_coef2` of `NoiseSchedule`;
# `q_posterior` returns $(\tilde\mu_t, \tilde\beta_t, \log\tilde\beta_t)$.  Check against a
# grid evaluation of Bayes:

# %%
x0 = 0.7
post = (normal_pdf(x_t, math.sqrt(1 - betas[index]) * grid, betas[index])
        * normal_pdf(grid, math.sqrt(abar_prev) * x0, 1 - abar_prev))
post /= trapezoid(post, grid)
grid_mean = trapezoid(grid * post, grid)
grid_var = trapezoid((grid - grid_mean) ** 2 * post, grid)
mean_f, var_f, _ = q_posterior(coarse, dev([[x0]]), dev([[x_t]]), dev([index]))
show("posterior mean: grid vs (3.4)",
     (round(float(grid_mean), 6), round(float(host(mean_f).item()), 6)))
show("posterior var: grid vs (3.3)",
     (round(float(grid_var), 6), round(float(host(var_f).item()), 6)))
assert abs(grid_mean - host(mean_f).item()) < 1e-6, "(3.4) against Bayes on the grid"
assert abs(grid_var - host(var_f).item()) < 1e-6, "(3.3) against Bayes on the grid"
spread = float(np.ptp(means)) / math.sqrt(var)
ratio = float(math.sqrt(betas[index] * abar_prev / ((1 - abar[index]) * (1 - abar_prev)))
         * np.ptp(points))
show("coarse step: spread of the means / std, and the ratio above",
     (round(spread, 4), round(ratio, 4)))
assert abs(spread - ratio) < 1e-9 * ratio

# %% [markdown]
# ## 4. The model's reverse step
#
# We approximate each reverse conditional by a Gaussian
#
# $$
# p_\theta(x_{t-1} \mid x_t) = \mathcal{N}\big(x_{t-1};\, \mu_\theta(x_t, t),\, \sigma_t^2 I\big).
# \tag{3.5}
# $$
#
# *Variance*: Ho et al. fix it, to one of two values (`fixed_small` and `fixed_large` in
# minidiff),
#
# $$
# \sigma_t^2 = \tilde\beta_t \qquad \text{or} \qquad \sigma_t^2 = \beta_t ;
# \tag{3.6}
# $$
#
# the first is exact when the data is a single point, the second when
# $x_0 \sim \mathcal{N}(0, I)$ (then every $q(x_{t-1})$ is $\mathcal{N}(0, I)$ and
# $\operatorname{Var}[x_{t-1} \mid x_t] = 1 - \alpha_t = \beta_t$).
#
# *Mean*: the best $\mu_\theta$ is $\mathbb{E}[x_{t-1} \mid x_t]
# = \mathrm{coef}_1\, \mathbb{E}[x_0 \mid x_t] + \mathrm{coef}_2\, x_t$, the posterior mean
# (3.4) at the best guess of $x_0$.  A network predicting the noise gives that guess through
# (2.5), $\hat x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\, \epsilon_\theta)/\sqrt{\bar\alpha_t}$.
# Substitute it into (3.4) and use $\sqrt{\bar\alpha_{t-1}}/\sqrt{\bar\alpha_t} = 1/\sqrt{\alpha_t}$:
#
# $$
# \begin{aligned}
# \mu_\theta &= \frac{\beta_t}{(1 - \bar\alpha_t)\sqrt{\alpha_t}}
#     \big(x_t - \sqrt{1 - \bar\alpha_t}\, \epsilon_\theta\big)
#   + \frac{(1 - \bar\alpha_{t-1}) \sqrt{\alpha_t}}{1 - \bar\alpha_t}\, x_t \\
#   &= \frac{\beta_t + \alpha_t - \bar\alpha_t}{(1 - \bar\alpha_t)\sqrt{\alpha_t}}\, x_t
#     - \frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1 - \bar\alpha_t}}\, \epsilon_\theta
#    \qquad (\beta_t + \alpha_t = 1) \\
#   &= \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\,
#     \epsilon_\theta(x_t, t)\Big).
# \end{aligned}
# \tag{3.7}
# $$
#
# Two checks.  First (3.7)'s last line, written out here, against `p_mean_variance` for an
# arbitrary noise prediction (the library goes through $\hat x_0$ and (3.4): the first line).
# Then, for the toy data, the optimal predictor is known:
# $\epsilon^*(x_t) = (x_t - \sqrt{\bar\alpha_t}\, \mathbb{E}[x_0 \mid x_t]) / \sqrt{1 - \bar\alpha_t}$
# with $\mathbb{E}[x_0 \mid x_t] = \sum_k w_k c_k$, and (3.7) at $\epsilon^*$ must be the mean
# of the true mixture (3.2).

# %%
def exact_eps(schedule):
    """E[eps | x_t] for the three-point data set (section 4)."""
    abar_all = host(schedule.alphas_cumprod)

    def model(x, t):
        x, t = host(x), host(t)
        a = abar_all[t][:, None, None]
        logits = (np.log(weights)[None, None, :]
                  - 0.5 * (x[..., None] - np.sqrt(a) * points) ** 2 / (1 - a))
        w = np.exp(logits - logits.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
        x0_mean = (w * points).sum(axis=-1)
        return dev((x - np.sqrt(a[..., 0]) * x0_mean) / np.sqrt(1 - a[..., 0]))
    return model


def mean_37(x, i, eps):
    """(3.7), last line, at 0-based index i."""
    return (x - betas[i] / math.sqrt(1 - abar[i]) * eps) / math.sqrt(1 - betas[i])


xs_any, eps_any = host(backend.randn(10, 1)), host(backend.randn(10, 1))
steps_any = np.arange(10)
library = host(p_mean_variance(coarse, dev(eps_any), dev(xs_any), backend.to_device(steps_any),
                               clip_x0=False)["mean"])
by_hand = np.array([mean_37(xs_any[i], i, eps_any[i]) for i in steps_any])
show("max |p_mean_variance - (3.7)|, any eps", f"{np.abs(library - by_hand).max():.1e}")
assert np.allclose(library, by_hand, rtol=1e-12, atol=1e-12), "(3.7) against p_mean_variance"

model = exact_eps(coarse)
eps_star = model(dev([[x_t]]), backend.to_device(np.array([index])))
out = p_mean_variance(coarse, eps_star, dev([[x_t]]), dev([index]), clip_x0=False)
at_star = float(mean_37(x_t, index, float(host(eps_star).item())))
show("mixture mean (3.2) vs (3.7) at eps*", (round(mix_mean, 6), round(at_star, 6)))
assert abs(mix_mean - at_star) < 1e-10, "(3.7) at eps* is the mean of (3.2)"
assert abs(mix_mean - host(out["mean"]).item()) < 1e-10
show("mixture var vs beta~ (fixed_small) (3.6)", (round(mix_var, 4), round(var, 4)))
assert mix_var > var  # the mixture is wider than one component: fixed_small underestimates

# (3.6)'s other end: for x_0 ~ N(0, 1) every q(x_{t-1}) is N(0, 1), and Bayes (3.1) on the grid
# gives the true reverse variance, which fixed_large must equal
gauss = normal_pdf(x_t, math.sqrt(1 - betas[index]) * grid, betas[index]) * normal_pdf(grid, 0, 1)
gauss /= trapezoid(gauss, grid)
gauss_var = trapezoid(grid ** 2 * gauss, grid) - trapezoid(grid * gauss, grid) ** 2
large = float(host(p_mean_variance(coarse, dev([[0.0]]), dev([[x_t]]), dev([index]),
                                   variance="fixed_large")["variance"]).item())
show("x_0 ~ N(0,1): reverse var by Bayes, fixed_large (3.6)", (round(float(gauss_var), 6),
                                                              round(large, 6)))
assert abs(gauss_var - large) < 1e-6, "(3.6): fixed_large is exact for N(0, 1) data"

# %% [markdown]
# ## 5. Sampling
#
# Algorithm 2 of Ho et al.: $x_T \sim \mathcal{N}(0, I)$; for $t = T, \dots, 1$,
# $x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z$ with $z \sim \mathcal{N}(0, I)$; the last step
# ($t = 1$) returns the mean without noise.  With the exact $\epsilon^*$ and the paper's
# schedule, samples land on the three data points in the right proportions.

# %%
fine = NoiseSchedule.linear(200 if args.quick else 1000, 1e-4, 0.02 * (5 if args.quick else 1))
n_samples = 400 if args.quick else 3000
samples = host(ddpm_sample(exact_eps(fine), fine, (n_samples, 1), clip_x0=True))[:, 0]
nearest = np.abs(samples[:, None] - points[None, :]).argmin(axis=1)
close = np.abs(samples - points[nearest]) < 0.05
freq = np.bincount(nearest, minlength=3) / n_samples
show("fraction of samples within 0.05 of a point", round(float(close.mean()), 3))
show("sample frequencies vs weights", (np.round(freq, 3), weights))
assert close.mean() > 0.95
assert np.abs(freq - weights).max() < 5 * math.sqrt(0.25 / n_samples)

plt = pyplot()   # None without matplotlib: the figures are then skipped
if plt is not None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    axes[0].plot(grid, mixture, label="true q(x_{t-1} | x_t), (3.2)")
    axes[0].plot(grid, normal_pdf(grid, mix_mean, mix_var), "--", label="moment-matched Gaussian")
    axes[0].plot(grid, normal_pdf(grid, mix_mean, var), ":", label="DDPM: mean (3.7), var beta~")
    axes[0].set_xlim(-2, 2)
    axes[0].set_title(f"reverse step from x_t = {x_t} (T = 10)")
    axes[0].legend(fontsize=7)
    axes[1].plot(grid, post, label="Bayes on a grid")
    axes[1].plot(grid, normal_pdf(grid, host(mean_f).item(), host(var_f).item()), "--",
                 label="N(mu~, beta~) (3.3)-(3.4)")
    axes[1].set_xlim(-1, 2)
    axes[1].set_title(f"q(x_{{t-1}} | x_t, x_0 = {x0})")
    axes[1].legend(fontsize=7)
    axes[2].hist(samples, bins=np.linspace(-1.2, 1.2, 121), density=True)
    for c in points:
        axes[2].axvline(c, color="k", lw=0.5)
    axes[2].set_title("Algorithm 2 with the exact eps*")
    fig.tight_layout()
    figure = out_dir / "03_reverse_process.png"
    fig.savefig(figure, dpi=100)
    plt.close(fig)
    show("figure", figure)
    assert figure.stat().st_size > 0

print("lesson 03: all checks passed")
