# %% [markdown]
# # Lesson 04 — The loss: from a likelihood bound to "predict the noise"
#
# We want parameters $\theta$ that make the data likely under the reverse process.  This
# lesson derives the variational bound on the negative log-likelihood, splits it into one term
# per step, and follows Ho et al. (2020) from the KL terms to the one-line loss everybody
# trains with: the mean squared error between the true and the predicted noise.  A last
# section puts the losses side by side in terms of the signal-to-noise ratio.
#
# Sections:
#
# 1. The bound, as in a VAE, eq. (4.1)
# 2. Telescoping it into $L_T + \sum L_{t-1} + L_0$, eq. (4.2)
# 3. $L_T$ is a constant; KL of two Gaussians, eq. (4.3)
# 4. $L_{t-1}$ as a distance between means, eq. (4.4), and in terms of noise, eq. (4.5)
# 5. Dropping the weight: $L_{\text{simple}}$, eq. (4.6), and what its minimiser is
# 6. $L_0$, a discretized decoder, eq. (4.7); the whole bound in bits per dim, eq. (4.8),
#    against a direct Monte-Carlo estimate of (4.1)
# 7. The signal-to-noise view: the bound's weight, the $\epsilon$, $x_0$ and $v$ losses and
#    Min-SNR as one $x_0$ error under different weights, eq. (4.9)-(4.12)
#
# ```
# python lessons/04_loss.py [--quick] [--out DIR]
# ```

# %%
import math

from _lesson import host, lesson_parser, pyplot, show, start  # finds minidiff; --quick, --out
import minidiff as md
from minidiff import backend
from minidiff.diffusion import (NoiseSchedule, bits_per_dim, discretized_gaussian_log_likelihood,
                                loss_simple, normal_kl, p_mean_variance, predict_eps_from_x0,
                                predict_v, predict_x0_from_eps, predict_x0_from_v, prior_term,
                                q_mean_variance, q_posterior, q_sample, vlb_term_at, vlb_terms)

np = backend.host

args, out_dir = start(lesson_parser("Lesson 04: the loss", "a fast pass (fewer samples)"), dtype="float64")
N = 4000 if args.quick else 40000


def dev(a):
    return backend.to_device(np.asarray(a, dtype=np.float64))


def log_normal(x, mean, var):
    return -0.5 * (x - mean) ** 2 / var - 0.5 * np.log(2 * math.pi * var)


# %% [markdown]
# ## 1. A bound on the negative log-likelihood
#
# The model's likelihood $p_\theta(x_0) = \int p_\theta(x_{0:T})\,dx_{1:T}$ sums over every
# path of latents: intractable.  As in a VAE, bring in a distribution over the latents — here
# the forward process $q(x_{1:T} \mid x_0)$, a fixed "encoder" with no parameters — and use
# Jensen's inequality ($\log$ is concave, so $\log \mathbb{E}[Y] \ge \mathbb{E}[\log Y]$):
#
# $$
# -\log p_\theta(x_0)
#   = -\log \mathbb{E}_{q}\left[\frac{p_\theta(x_{0:T})}{q(x_{1:T} \mid x_0)}\right]
#   \le \mathbb{E}_{q}\left[-\log \frac{p_\theta(x_{0:T})}{q(x_{1:T} \mid x_0)}\right]
#   =: L .
# \tag{4.1}
# $$
#
# ## 2. Splitting the bound
#
# Both chains factorise: $p_\theta(x_{0:T}) = p(x_T) \prod_{t=1}^T p_\theta(x_{t-1} \mid x_t)$
# and $q(x_{1:T} \mid x_0) = \prod_{t=1}^T q(x_t \mid x_{t-1})$, so
#
# $$
# L = \mathbb{E}_q\Big[-\log p(x_T)
#       - \sum_{t=2}^{T} \log \frac{p_\theta(x_{t-1} \mid x_t)}{q(x_t \mid x_{t-1})}
#       - \log \frac{p_\theta(x_0 \mid x_1)}{q(x_1 \mid x_0)}\Big].
# $$
#
# For $t \ge 2$ rewrite each forward factor with Bayes' rule, conditioning on $x_0$ (which the
# Markov property allows: $q(x_t \mid x_{t-1}) = q(x_t \mid x_{t-1}, x_0)$):
#
# $$
# q(x_t \mid x_{t-1}) = \frac{q(x_{t-1} \mid x_t, x_0)\, q(x_t \mid x_0)}{q(x_{t-1} \mid x_0)} .
# $$
#
# The ratios $q(x_t \mid x_0) / q(x_{t-1} \mid x_0)$ telescope over $t = 2, \dots, T$ to
# $q(x_T \mid x_0) / q(x_1 \mid x_0)$, and the $q(x_1 \mid x_0)$ left over cancels the one in
# the $t = 1$ term:
#
# $$
# L = \mathbb{E}_q\Big[\log \frac{q(x_T \mid x_0)}{p(x_T)}
#       + \sum_{t=2}^{T} \log \frac{q(x_{t-1} \mid x_t, x_0)}{p_\theta(x_{t-1} \mid x_t)}
#       - \log p_\theta(x_0 \mid x_1)\Big].
# $$
#
# The KL step: $q(x_{1:T} \mid x_0)$ factorises as $q(x_t \mid x_0)\, q(x_{t-1} \mid x_t, x_0)$
# times the other steps, so the expectation of the $t$-th log-ratio over $x_{t-1}$ is a KL
# divergence, and over $x_T$ likewise:
#
# $$
# L = \underbrace{D_{\mathrm{KL}}\big(q(x_T \mid x_0) \,\|\, p(x_T)\big)}_{L_T}
#   + \sum_{t=2}^{T} \underbrace{\mathbb{E}_{q(x_t \mid x_0)}
#       D_{\mathrm{KL}}\big(q(x_{t-1} \mid x_t, x_0) \,\|\, p_\theta(x_{t-1} \mid x_t)\big)}_{L_{t-1}}
#   \underbrace{- \,\mathbb{E}_{q(x_1 \mid x_0)} \log p_\theta(x_0 \mid x_1)}_{L_0} .
# \tag{4.2}
# $$
#
# The identity behind it holds for every trajectory:
# $\log q(x_{1:T} \mid x_0) = \log q(x_T \mid x_0) + \sum_{t \ge 2} \log q(x_{t-1} \mid x_t, x_0)$,
# the chain's own densities (1.1) on the left, the library's `q_mean_variance` (2.4) and
# `q_posterior` (3.3)-(3.4) on the right.  Check it:

# %%
schedule = NoiseSchedule.linear(50, 1e-3, 0.2)
betas, T = host(schedule.betas), schedule.num_timesteps


def check_telescoping():
    """(4.2)'s identity on three sampled trajectories."""
    x0 = np.array([0.3, -0.5, 0.9])
    traj, lhs = [x0], np.zeros(3)
    for b in betas:
        nxt = math.sqrt(1 - b) * traj[-1] + math.sqrt(b) * host(backend.randn(3))
        lhs += log_normal(nxt, math.sqrt(1 - b) * traj[-1], b)
        traj.append(nxt)
    m, v, _ = q_mean_variance(schedule, dev(x0[:, None]), dev(np.full(3, T - 1)))
    rhs = log_normal(traj[T], host(m)[:, 0], host(v)[:, 0])
    for i in range(1, T):  # index i = the paper's step i+1: q(x_i | x_{i+1}, x_0)
        pm, pv, _ = q_posterior(schedule, dev(x0[:, None]), dev(traj[i + 1][:, None]),
                                dev(np.full(3, i)))
        rhs += log_normal(traj[i], host(pm)[:, 0], host(pv)[:, 0])
    show("log q(x_1:T|x_0), two ways (4.2)", (np.round(lhs, 6), np.round(rhs, 6)))
    assert np.allclose(lhs, rhs, rtol=1e-9, atol=1e-8), "(4.2): the telescoped densities"


check_telescoping()

# %% [markdown]
# ## 3. $L_T$, and the KL of two Gaussians
#
# $L_T$ compares $q(x_T \mid x_0) = \mathcal{N}(\sqrt{\bar\alpha_T}\, x_0, (1 - \bar\alpha_T) I)$
# with the prior $\mathcal{N}(0, I)$.  Neither has a parameter (the schedule is fixed), so
# $L_T$ is a constant for training — and tiny for a good schedule (lesson 01, (1.4)).  Every KL
# here is between Gaussians; per dimension
#
# $$
# D_{\mathrm{KL}}\big(\mathcal{N}(m_1, s_1^2) \,\|\, \mathcal{N}(m_2, s_2^2)\big)
#   = \log \frac{s_2}{s_1} + \frac{s_1^2 + (m_1 - m_2)^2}{2 s_2^2} - \frac{1}{2}
# \tag{4.3}
# $$
#
# (`normal_kl`, with log-variances).  A Monte-Carlo check of (4.3):
# $\mathbb{E}_{x \sim \mathcal{N}_1}[\log \mathcal{N}_1(x) - \log \mathcal{N}_2(x)]$.

# %%
def check_gaussian_kl():
    m1, s1, m2, s2 = 0.3, 0.5, -0.2, 0.8
    xs = m1 + s1 * host(backend.randn(N))
    mc = log_normal(xs, m1, s1 ** 2) - log_normal(xs, m2, s2 ** 2)
    kl = float(host(normal_kl(dev(m1), dev(2 * math.log(s1)), dev(m2), dev(2 * math.log(s2)))))
    show("KL: formula (4.3) vs Monte Carlo", (round(kl, 4), round(float(mc.mean()), 4)))
    assert abs(kl - mc.mean()) < 5 * mc.std() / math.sqrt(N), "(4.3) against Monte Carlo"


check_gaussian_kl()
paper = NoiseSchedule.linear(1000)
l_T = host(prior_term(paper, dev([[1.0], [-1.0], [0.0]])))
show("L_T for the paper's schedule, x_0 = 1, -1, 0", np.round(l_T, 8))
assert l_T.max() < 1e-4

# %% [markdown]
# ## 4. $L_{t-1}$ in terms of the noise
#
# With $p_\theta(x_{t-1} \mid x_t) = \mathcal{N}(\mu_\theta, \sigma_t^2 I)$ (3.5) and the
# posterior $\mathcal{N}(\tilde\mu_t, \tilde\beta_t I)$ (3.3)-(3.4), the KL (4.3) in each of the
# $d$ dimensions has a part that depends on $\theta$ (through $\mu_\theta$) and a part that does
# not:
#
# $$
# L_{t-1} = \mathbb{E}_{q(x_t \mid x_0)}\left[\frac{1}{2\sigma_t^2}
#     \lVert \tilde\mu_t(x_t, x_0) - \mu_\theta(x_t, t) \rVert^2\right] + C_t,
# \qquad
# C_t = \frac{d}{2}\left(\frac{\tilde\beta_t}{\sigma_t^2} - 1
#     - \log \frac{\tilde\beta_t}{\sigma_t^2}\right) \ge 0 ,
# \tag{4.4}
# $$
#
# and $C_t = 0$ exactly when $\sigma_t^2 = \tilde\beta_t$.  Write $x_0$ through $x_t$ and the
# true noise (2.5): the posterior mean (3.4) becomes
# $\tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\epsilon\big)$,
# the same form as the model's mean (3.7) with $\epsilon_\theta$ in place of $\epsilon$.
# Subtracting, $\tilde\mu_t - \mu_\theta = \frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1 - \bar\alpha_t}}
# (\epsilon_\theta - \epsilon)$, and with $x_t = \sqrt{\bar\alpha_t} x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon$,
#
# $$
# L_{t-1} = \mathbb{E}_{x_0, \epsilon}\left[\lambda_t\,
#     \lVert \epsilon - \epsilon_\theta(x_t, t) \rVert^2\right] + C_t,
# \qquad
# \lambda_t = \frac{\beta_t^2}{2 \sigma_t^2 \alpha_t (1 - \bar\alpha_t)} .
# \tag{4.5}
# $$
#
# Check (4.5), constant included, against `vlb_term_at` (which evaluates the KL (4.3)
# directly, in nats per dimension) for an arbitrary stand-in "network"
# $\epsilon_\theta(x, t) = 0.7\,x$, with the same noise draw for both: once with
# $\sigma_t^2 = \tilde\beta_t$ (`fixed_small`, $C_t = 0$) and once with
# $\sigma_t^2 = \beta_t$ (`fixed_large`, $C_t > 0$).

# %%
def toy_model(x, t):
    return 0.7 * x


n = 6
x0_batch = dev(np.round(np.linspace(-1, 1, n) * 127.5) / 127.5)[:, None]
t_batch = backend.to_device(np.array([1, 5, 10, 20, 35, 49]))
tb = host(t_batch)
abar = np.cumprod(1 - betas)                       # by hand, from the betas
abar_prev = np.append(1.0, abar[:-1])
beta_tilde = betas * (1 - abar_prev) / (1 - abar)  # (3.3) by hand


def check_noise_form():
    """(4.5) and (4.4)'s constant against the KL computed by the library."""
    eps = backend.randn(n, 1)
    x_t = host(x0_batch)[:, 0] * np.sqrt(abar[tb]) + np.sqrt(1 - abar[tb]) * host(eps)[:, 0]
    err = (0.7 * x_t - host(eps)[:, 0]) ** 2       # ||eps - eps_theta(x_t, t)||^2, d = 1
    for variance, sigma2 in (("fixed_small", beta_tilde[tb]), ("fixed_large", betas[tb])):
        kl_terms = host(vlb_term_at(schedule, toy_model, x0_batch, t_batch, noise=eps,
                                    variance=variance))
        lam = betas[tb] ** 2 / (2 * sigma2 * (1 - betas[tb]) * (1 - abar[tb]))
        const = 0.5 * (beta_tilde[tb] / sigma2 - 1 - np.log(beta_tilde[tb] / sigma2))
        show(f"KL (4.3) vs (4.5), {variance}", (np.round(kl_terms, 5),
                                                 np.round(lam * err + const, 5)))
        assert np.allclose(kl_terms, lam * err + const, rtol=1e-8, atol=1e-12), \
            f"(4.5) with {variance}"


check_noise_form()

# %% [markdown]
# ## 5. $L_{\text{simple}}$
#
# Ho et al. found that dropping the weight $\lambda_t$ in (4.5) trains better:
#
# $$
# L_{\text{simple}} = \mathbb{E}_{t \sim \mathcal{U}\{1..T\},\, x_0,\, \epsilon}
#     \lVert \epsilon - \epsilon_\theta(x_t, t) \rVert^2,
# \qquad x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon .
# \tag{4.6}
# $$
#
# With $\sigma_t^2 = \tilde\beta_t$ (3.3) the weight simplifies to
# $\lambda_t = \frac{\beta_t}{2 \alpha_t (1 - \bar\alpha_{t-1})}$: large at small $t$, where
# $1 - \bar\alpha_{t-1}$ is tiny and the task is easy (a little noise on a clear image), and
# about $\beta_t / 2$, far below 1, once the signal is gone.  Dropping it shifts effort towards
# the noisier steps that decide the global structure of a sample — a re-weighted bound that is
# no longer a likelihood bound, but gives better samples.  (The $t = 1$ term of (4.6) stands in
# for the decoder $L_0$, which in the bound is a discretized likelihood (4.7), not an MSE.)
#
# **What the network learns.**  For one $t$, split the error of any function $f$ of $x_t$
# around the conditional mean $\bar\epsilon(x_t) = \mathbb{E}[\epsilon \mid x_t]$:
#
# $$
# \mathbb{E}\lVert \epsilon - f(x_t) \rVert^2
#   = \mathbb{E}\lVert \epsilon - \bar\epsilon(x_t) \rVert^2
#   + \mathbb{E}\lVert \bar\epsilon(x_t) - f(x_t) \rVert^2 ,
# $$
#
# since the cross term $\mathbb{E}[(\epsilon - \bar\epsilon(x_t))^\top g(x_t)]$ vanishes for
# every $g$ (condition on $x_t$ first).  So the minimiser is $\mathbb{E}[\epsilon \mid x_t]$,
# at every $t$ — and therefore for *any* positive weights $\lambda_t$: with unlimited capacity,
# (4.5) and (4.6) have the same optimum.  Dropping $\lambda_t$ only changes how a finite
# network spends its capacity across $t$.
#
# Check on lesson 03's data set of three points, where $\mathbb{E}[\epsilon \mid x_t]$ is known
# ((3.2), lesson 03 section 4): the residual $\epsilon - \bar\epsilon(x_t)$ is uncorrelated with
# functions of $x_t$, and moving $f$ away from $\bar\epsilon$ raises the loss.

# %%
points, point_w = np.array([-0.8, 0.1, 0.7]), np.array([0.3, 0.3, 0.4])


def eps_given_x_t(x, a):
    """E[eps | x_t] for the three-point data set at abar_t = a (Bayes' rule, (3.2))."""
    logits = np.log(point_w) - 0.5 * (x[:, None] - math.sqrt(a) * points) ** 2 / (1 - a)
    r = np.exp(logits - logits.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    return (x - math.sqrt(a) * (r @ points)) / math.sqrt(1 - a)


def check_minimiser():
    a = float(abar[20])
    x0s = points[np.searchsorted(np.cumsum(point_w), host(backend.rand(4 * N)))]
    eps = host(backend.randn(4 * N))
    x = math.sqrt(a) * x0s + math.sqrt(1 - a) * eps
    residual = eps - eps_given_x_t(x, a)
    for name, g in (("1", np.ones_like(x)), ("x_t", x), ("tanh(3 x_t)", np.tanh(3 * x))):
        corr = residual * g
        show(f"E[(eps - E[eps|x_t]) {name}] (expect 0)", f"{corr.mean():+.4f}")
        assert abs(corr.mean()) < 5 * corr.std() / math.sqrt(corr.size), \
            "E[eps | x_t] minimises (4.6)"
    best = float((residual ** 2).mean())
    nudged = float(((residual - 0.1 * np.tanh(3 * x)) ** 2).mean())
    show("MSE at E[eps|x_t], and nudged", (round(best, 4), round(nudged, 4)))
    assert best < nudged


check_minimiser()

# %% [markdown]
# `loss_simple(prediction, eps)` is the batch mean of (4.6); with a Tensor prediction it
# returns a Tensor and gradients flow back into the network.

# %%
weights_all = betas ** 2 / (2 * np.maximum(beta_tilde, 1e-300) * (1 - betas) * (1 - abar))
show("weight lambda_t of (4.5) at steps 2, 25, 50", np.round(weights_all[[1, 24, 49]], 4))
simplified = betas[1:] / (2 * (1 - betas[1:]) * (1 - abar_prev[1:]))
assert np.allclose(weights_all[1:], simplified, rtol=1e-10)
assert weights_all[1] > 10 * weights_all[24] and weights_all[24:].max() < 0.5
eps = backend.randn(n, 1)
pred = md.tensor(host(backend.randn(n, 1)), requires_grad=True)
loss = loss_simple(pred, eps)
loss.backward()
show("L_simple (4.6) and its gradient check", round(loss.item(), 5))
assert abs(loss.item() - float(((host(pred) - host(eps)) ** 2).mean())) < 1e-12, "(4.6)"
assert np.allclose(host(pred.grad), 2 * (host(pred) - host(eps)) / n)

# %% [markdown]
# ## 6. $L_0$ and bits per dimension
#
# Image data is discrete: 256 levels scaled to $[-1, 1]$, spaced $2/255$.  The last step scores
# a level by the Gaussian mass of its bin,
#
# $$
# p_\theta(x_0 \mid x_1) = \int_{x_0 - 1/255}^{x_0 + 1/255}
#     \mathcal{N}\big(y;\, \mu_\theta(x_1, 1),\, \sigma_1^2\big)\, dy ,
# \tag{4.7}
# $$
#
# with the two edge bins extended to $-\infty$ and $+\infty$ so the 256 probabilities sum to
# one.  Which $\sigma_1$?  The posterior variance of the first step is $\tilde\beta_1 = 0$
# ($\bar\alpha_0 = 1$: given $x_1$ and $x_0$, nothing is left to guess), which would make the
# decoder a point mass.  Like improved-diffusion, minidiff uses $\sigma_1^2 = \tilde\beta_2$ for
# the decoder under `fixed_small` (and `fixed_large`): `posterior_log_variance_clipped`.
#
# The bound in nats per dimension divided by $\ln 2$ is the usual *bits per dim*:
#
# $$
# \text{bits/dim} = \frac{L}{d \ln 2}
# \tag{4.8}
# $$
#
# — the cost of coding the data with the model (8 bits per dim is what storing raw bytes
# costs).  `vlb_terms` evaluates (4.2) term by term; the check is against (4.1) itself:
# sample forward trajectories $x_{1:T} \sim q(x_{1:T} \mid x_0)$ and average
# $\log q(x_{1:T} \mid x_0) - \log p_\theta(x_{0:T})$, with every density written out here by
# hand: the forward steps (1.1), the prior $\mathcal{N}(0, I)$, the reverse steps (3.5) with the
# mean (3.7) and $\sigma_t^2 = \tilde\beta_t$, and the decoder (4.7) with
# $\sigma_1^2 = \tilde\beta_2$.  (The stand-in $\epsilon_\theta = 0.7\,x$ is a poor model: it
# costs more than the 8 bits of the raw bytes.  Training is what brings this number down.)

# %%
levels = np.linspace(-1, 1, 256)
probs = np.exp(host(discretized_gaussian_log_likelihood(dev(levels), dev(np.full(256, 0.2)),
                                                        dev(np.full(256, math.log(0.3))))))
show("sum over 256 bins of p(x_0 | x_1) (4.7)", round(float(probs.sum()), 12))
assert abs(probs.sum() - 1) < 1e-6
first = p_mean_variance(schedule, dev([[0.0]]), dev([[0.1]]), backend.to_device(np.array([0])))
show("sigma_1^2 of the decoder, and beta~_2", (float(np.exp(host(first["log_variance"]).item())),
                                               float(beta_tilde[1])))
assert abs(float(host(first["log_variance"]).item()) - math.log(beta_tilde[1])) < 1e-12

data = dev(np.round(host(backend.rand(64 if args.quick else 512, 2)) * 255) / 127.5 - 1)
terms = vlb_terms(schedule, toy_model, data)
total = host(terms["prior"]) + host(terms["terms"]).sum(axis=1)
assert (host(terms["terms"])[:, 1:] >= -1e-12).all()       # every L_t is a KL (4.3): >= 0
erf = np.vectorize(math.erf)


def normal_cdf(z):
    return 0.5 * (1 + erf(z / math.sqrt(2)))


def direct_bound(x0, paths):
    """(4.1) by Monte Carlo over ``paths`` forward trajectories per item, nats per dim:
    the mean of log q(x_{1:T} | x_0) - log p_theta(x_{0:T}), each density by hand."""
    x0 = np.repeat(x0[None], paths, axis=0)                     # (paths, items, dims)
    xs, log_q = [x0], 0.0
    for b in betas:                                             # forward steps (1.1)
        nxt = math.sqrt(1 - b) * xs[-1] + math.sqrt(b) * host(backend.randn(*x0.shape))
        log_q = log_q + log_normal(nxt, math.sqrt(1 - b) * xs[-1], b)
        xs.append(nxt)

    def mean(x, i):                                             # (3.7) at 0-based index i
        return (x - betas[i] / math.sqrt(1 - abar[i]) * 0.7 * x) / math.sqrt(1 - betas[i])

    log_p = log_normal(xs[T], 0.0, 1.0)                         # p(x_T) = N(0, I)
    for i in range(1, T):                                       # reverse steps (3.5)
        log_p = log_p + log_normal(xs[i], mean(xs[i + 1], i), beta_tilde[i])
    s1 = math.sqrt(beta_tilde[1])                               # decoder (4.7)
    upper = np.where(x0 > 0.999, np.inf, (x0 + 1 / 255 - mean(xs[1], 0)) / s1)
    lower = np.where(x0 < -0.999, -np.inf, (x0 - 1 / 255 - mean(xs[1], 0)) / s1)
    log_p = log_p + np.log(np.maximum(normal_cdf(upper) - normal_cdf(lower), 1e-300))
    return (log_q - log_p).mean(axis=-1)                        # (paths, items)


def check_bound(repeats=8):
    """(4.2) as the library sums it against (4.1) estimated directly, item by item."""
    paths = 100 if args.quick else 400
    items = host(data).shape[0]
    by_terms = host(vlb_terms(schedule, toy_model, dev(np.tile(host(data), (repeats, 1))))[
        "total"]).reshape(repeats, items).mean(axis=0)         # (4.2), `repeats` draws per item
    direct = direct_bound(host(data), paths).mean(axis=0)      # (4.1), `paths` per item
    gap = by_terms - direct
    gap_se = float(gap.std(ddof=1) / math.sqrt(items))
    show("bound, nats/dim: (4.2) by vlb_terms", f"{by_terms.mean():.3f}")
    show("bound, nats/dim: (4.1) directly", f"{direct.mean():.3f}")
    show("difference, item by item", f"{gap.mean():+.3f} +- {gap_se:.3f}")
    assert abs(gap.mean()) < 5 * gap_se, "(4.2) = (4.1)"


check_bound()
full = bits_per_dim(schedule, toy_model, data)
mc = bits_per_dim(schedule, toy_model, data, num_samples=4 if args.quick else 16)
show("bits/dim: full bound (4.8)", f"{full['bpd']:.3f} +- {full['stderr']:.3f}")
show("bits/dim: Monte Carlo over t", f"{mc['bpd']:.3f} +- {mc['stderr']:.3f}")
assert abs(mc["bpd"] - full["bpd"]) < 5 * math.hypot(mc["stderr"], full["stderr"])

# %% [markdown]
# ## 7. The signal-to-noise view
#
# Write every weight with the signal-to-noise ratio (2.7),
# $\mathrm{snr}_t = \bar\alpha_t / (1 - \bar\alpha_t)$.  Three facts tie the losses together.
#
# **The bound's weight.**  With $\sigma_t^2 = \tilde\beta_t$,
# $\lambda_t = \frac{\beta_t}{2\alpha_t(1 - \bar\alpha_{t-1})}$ (section 5), and
# $\frac{\mathrm{snr}_{t-1}}{\mathrm{snr}_t} = \frac{1 - \bar\alpha_t}{\alpha_t (1 - \bar\alpha_{t-1})}$,
# whose excess over 1 is $\frac{1 - \bar\alpha_t - \alpha_t + \bar\alpha_t}{\alpha_t(1 - \bar\alpha_{t-1})}
# = \frac{\beta_t}{\alpha_t (1 - \bar\alpha_{t-1})}$.  So
#
# $$
# \lambda_t = \frac{1}{2}\left(\frac{\mathrm{snr}_{t-1}}{\mathrm{snr}_t} - 1\right),
# \qquad
# L_{t-1} = \frac{1}{2}\left(\mathrm{snr}_{t-1} - \mathrm{snr}_t\right)
#     \mathbb{E}\lVert x_0 - \hat x_0 \rVert^2 ,
# \tag{4.10}
# $$
#
# the second form because (2.5) turns a noise error into an $x_0$ error:
# $\hat x_0 - x_0 = -(\hat\epsilon - \epsilon)/\sqrt{\mathrm{snr}_t}$ at the same $x_t$.
#
# **Three targets, one error.**  At a fixed $x_t$ a prediction of $\epsilon$, of $x_0$ or of
# $v$ (2.6) determines the other two, and their errors are proportional:
# $\hat\epsilon - \epsilon = -\sqrt{\mathrm{snr}_t}\,(\hat x_0 - x_0)$ and
# $\hat v - v = \sqrt{\bar\alpha_t}(\hat\epsilon - \epsilon) - \sqrt{1 - \bar\alpha_t}(\hat x_0 - x_0)
# = -(\hat x_0 - x_0)/\sqrt{1 - \bar\alpha_t}$.  With $1/(1 - \bar\alpha_t) = 1 + \mathrm{snr}_t$:
#
# $$
# \lVert \epsilon - \hat\epsilon \rVert^2 = \mathrm{snr}_t\, \lVert x_0 - \hat x_0 \rVert^2,
# \qquad
# \lVert v - \hat v \rVert^2 = (1 + \mathrm{snr}_t)\, \lVert x_0 - \hat x_0 \rVert^2 .
# \tag{4.11}
# $$
#
# So the $\epsilon$-loss (4.6), the $x_0$-loss and the $v$-loss are one $x_0$ error under the
# weights $\mathrm{snr}_t$, $1$ and $1 + \mathrm{snr}_t$; the bound (4.10) weighs it by
# $\frac12(\mathrm{snr}_{t-1} - \mathrm{snr}_t)$.  $L_{\text{simple}}$ puts weight
# $\mathrm{snr}_t \approx 10^4$ on the $x_0$ error of the first steps and almost none on the
# last ones.
#
# **Min-SNR-$\gamma$** (Hang et al. 2023) caps that weight: it trains with the weight
# $\min(\mathrm{snr}_t, \gamma)$ on the $x_0$ error, whatever the target, which by (4.11) is a
# factor on each target's own squared error:
#
# $$
# w_t^{x_0} = \min(\mathrm{snr}_t, \gamma),
# \qquad
# w_t^{\epsilon} = \frac{\min(\mathrm{snr}_t, \gamma)}{\mathrm{snr}_t},
# \qquad
# w_t^{v} = \frac{\min(\mathrm{snr}_t, \gamma)}{1 + \mathrm{snr}_t} .
# \tag{4.9}
# $$
#
# **Why $v$ behaves better near $t = T$.**  Sampling uses the network's $x_0$ (3.7), and (2.5)
# and (2.6) turn an output error $\delta$ into an $x_0$ error
#
# $$
# \hat x_0 - x_0 = -\frac{\delta}{\sqrt{\mathrm{snr}_t}} \;\;(\epsilon\text{-prediction}),
# \qquad
# \hat x_0 - x_0 = -\frac{\delta}{\sqrt{1 + \mathrm{snr}_t}} \;\;(v\text{-prediction}).
# \tag{4.12}
# $$
#
# As $t \to T$, $\mathrm{snr}_t \to 0$: the $\epsilon$-network's error is amplified without
# bound (by about 160 at $t = T$ on the paper's schedule), while its loss weighs the $x_0$ error
# by $\mathrm{snr}_t \to 0$ — it is barely trained to get $x_0$ right where sampling starts.  A
# $v$-network's error is never amplified ($\sqrt{1 + \mathrm{snr}_t} \ge 1$), and its loss weighs
# the $x_0$ error by at least 1 at every $t$.  (Its target also moves from $\epsilon$ at small
# $t$ to $-x_0$ at $t = T$, always of unit scale for unit-variance data.)
#
# Checks, each against a computation made here from the betas: (4.10) against the KL that
# `vlb_term_at` computes; (4.11) against `loss_simple` on predictions converted by the library
# (`predict_eps_from_x0`, `predict_v`); (4.9) against `loss_simple(..., min_snr_gamma=5)` for
# each target; (4.12) against `predict_x0_from_eps` and `predict_x0_from_v` at the last step.

# %%
snr = abar / (1 - abar)                            # (2.7), by hand from the betas
snr_prev = np.append(np.inf, snr[:-1])


def check_snr_weight():
    """(4.10): the KL term of the bound as an x_0 error weighted by (snr_{t-1} - snr_t)/2."""
    steps = np.arange(1, T)
    x0 = dev(np.round(np.linspace(-1, 1, T - 1) * 127.5) / 127.5)[:, None]
    eps = backend.randn(T - 1, 1)
    kl = host(vlb_term_at(schedule, toy_model, x0, backend.to_device(steps), noise=eps))
    x_t = host(x0)[:, 0] * np.sqrt(abar[steps]) + np.sqrt(1 - abar[steps]) * host(eps)[:, 0]
    eps_err = (0.7 * x_t - host(eps)[:, 0]) ** 2
    x0_hat = (x_t - np.sqrt(1 - abar[steps]) * 0.7 * x_t) / np.sqrt(abar[steps])   # (2.5)
    x0_err = (x0_hat - host(x0)[:, 0]) ** 2
    lam = 0.5 * (snr_prev[steps] / snr[steps] - 1)
    show("max |KL - (4.10) lambda_t ||eps err||^2|", f"{np.abs(kl - lam * eps_err).max():.1e}")
    show("max |KL - (4.10) (snr_t-1 - snr_t)/2 ||x_0 err||^2|",
         f"{np.abs(kl - 0.5 * (snr_prev[steps] - snr[steps]) * x0_err).max():.1e}")
    assert np.allclose(kl, lam * eps_err, rtol=1e-7, atol=1e-12), "(4.10), eps form"
    assert np.allclose(kl, 0.5 * (snr_prev[steps] - snr[steps]) * x0_err, rtol=1e-6,
                       atol=1e-12), "(4.10), x_0 form"


def check_three_targets(gamma=5.0):
    """(4.11) and (4.9) on predictions made from one x_0 guess."""
    steps = np.array([0, 3, 10, 20, 35, 49])
    t = backend.to_device(steps)
    x0 = backend.to_device(host(backend.randn(len(steps), 4)))
    eps = backend.randn(len(steps), 4)
    x_t = q_sample(schedule, x0, t, eps)
    x0_hat = x0 + 0.3 * backend.randn(len(steps), 4)            # some network's guess
    eps_hat = predict_eps_from_x0(schedule, x_t, t, x0_hat)    # the same guess as eps ...
    v_hat, v = predict_v(schedule, x0_hat, t, eps_hat), predict_v(schedule, x0, t, eps)  # ... v
    x0_loss = host(loss_simple(x0_hat, x0, reduce=False))
    eps_loss = host(loss_simple(eps_hat, eps, reduce=False))
    v_loss = host(loss_simple(v_hat, v, reduce=False))
    show("eps loss / x_0 loss vs snr_t (4.11)", np.round(eps_loss / x0_loss / snr[steps], 9))
    show("v loss / x_0 loss vs 1 + snr_t (4.11)",
         np.round(v_loss / x0_loss / (1 + snr[steps]), 9))
    assert np.allclose(eps_loss, snr[steps] * x0_loss, rtol=1e-8), "(4.11), eps"
    assert np.allclose(v_loss, (1 + snr[steps]) * x0_loss, rtol=1e-8), "(4.11), v"
    capped = np.minimum(snr[steps], gamma) * x0_loss           # (4.9) on the x_0 error
    for target, prediction, truth in (("x0", x0_hat, x0), ("eps", eps_hat, eps),
                                      ("v", v_hat, v)):
        weighted = host(loss_simple(prediction, truth, t, schedule, target, gamma, reduce=False))
        assert np.allclose(weighted, capped, rtol=1e-8), f"(4.9), target {target}"
    show(f"Min-SNR-{gamma:g} (4.9): x0, eps, v losses = min(snr, gamma) ||x_0 err||^2", True)


def check_amplification():
    """(4.12): an output error delta at the last step, as an x_0 error."""
    last = backend.to_device(np.array([T - 1]))
    x_t = backend.randn(1, 1000)
    delta = 0.01 * backend.randn(1, 1000)
    eps_hat = host(backend.randn(1, 1000))
    v_hat = host(backend.randn(1, 1000))
    by_eps = host(predict_x0_from_eps(schedule, x_t, last, dev(eps_hat) + delta)
                  - predict_x0_from_eps(schedule, x_t, last, dev(eps_hat)))
    by_v = host(predict_x0_from_v(schedule, x_t, last, dev(v_hat) + delta)
                - predict_x0_from_v(schedule, x_t, last, dev(v_hat)))
    gain_eps = float(np.abs(by_eps).mean() / np.abs(host(delta)).mean())
    gain_v = float(np.abs(by_v).mean() / np.abs(host(delta)).mean())
    show("x_0 error / output error at t = T: eps, v", (round(gain_eps, 3), round(gain_v, 4)))
    show("(4.12): 1/sqrt(snr_T), 1/sqrt(1 + snr_T)",
         (round(1 / math.sqrt(snr[-1]), 3), round(1 / math.sqrt(1 + snr[-1]), 4)))
    assert np.allclose(by_eps, -host(delta) / math.sqrt(snr[-1]), rtol=1e-8), "(4.12), eps"
    assert np.allclose(by_v, -host(delta) / math.sqrt(1 + snr[-1]), rtol=1e-8), "(4.12), v"


check_snr_weight()
check_three_targets()
check_amplification()
paper_abar = host(paper.alphas_cumprod)
paper_snr = paper_abar / (1 - paper_abar)
show("paper's schedule: 1/sqrt(snr_T), eps's amplification at t = T",
     f"{1 / math.sqrt(paper_snr[-1]):.0f}")

# %% [markdown]
# The figure: the weight of each loss on the $x_0$ error over $t$ for the paper's schedule
# (left), and the terms of the bound for the stand-in model (right).

# %%
plt = pyplot()   # None without matplotlib: the figures are then skipped
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    steps = np.arange(1, 1001)
    paper_prev = np.append(np.inf, paper_snr[:-1])
    axes[0].semilogy(steps[1:], 0.5 * (paper_prev[1:] - paper_snr[1:]),
                     label="bound (4.10): (snr_{t-1} - snr_t)/2")
    axes[0].semilogy(steps, paper_snr, label="eps loss, L_simple (4.11): snr_t")
    axes[0].semilogy(steps, np.ones_like(paper_snr), label="x_0 loss: 1")
    axes[0].semilogy(steps, 1 + paper_snr, "--", label="v loss (4.11): 1 + snr_t")
    axes[0].semilogy(steps, np.minimum(paper_snr, 5.0), ":", lw=2,
                     label="Min-SNR-5 (4.9): min(snr_t, 5)")
    axes[0].set_xlabel("step t (linear schedule, T = 1000)")
    axes[0].set_title("weight on ||x_0 - x0_hat||^2")
    axes[0].legend(fontsize=7)
    per_t = host(terms["terms"]).mean(axis=0) / math.log(2)
    axes[1].semilogy(np.arange(T), per_t, ".-")
    axes[1].set_xlabel("index t (0: L_0, t: L_t)")
    axes[1].set_title(f"terms of the bound (4.2), bits/dim; total {full['bpd']:.2f}")
    fig.tight_layout()
    figure = out_dir / "04_loss.png"
    fig.savefig(figure, dpi=100)
    plt.close(fig)
    show("figure", figure)
    assert figure.stat().st_size > 0

print("lesson 04: all checks passed")
