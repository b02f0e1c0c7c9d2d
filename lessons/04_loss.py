# %% [markdown]
# # Lesson 04 — The loss: from a likelihood bound to "predict the noise"
#
# We want parameters theta that make the data likely under the reverse process.  This lesson
# derives the variational bound on the negative log-likelihood, splits it into one term per
# step, and follows Ho et al. from the KL terms to the one-line loss everybody trains with:
# the mean squared error between the true and the predicted noise.
#
# Sections:
#
# 1. The bound, as in a VAE, eq. (4.1)
# 2. Telescoping it into L_T + sum L_{t-1} + L_0, eq. (4.2)
# 3. L_T is a constant; KL of two Gaussians, eq. (4.3)
# 4. L_{t-1} as a distance between means, eq. (4.4), and in terms of noise, eq. (4.5)
# 5. Dropping the weight: L_simple, eq. (4.6); Min-SNR weighting, eq. (4.9)
# 6. L_0, a discretized decoder, eq. (4.7); the whole bound in bits per dim, eq. (4.8)
#
#     python lessons/04_loss.py [--quick] [--out DIR]

# %%
import math

from _lesson import host, lesson_parser, pyplot, show, start  # finds minidiff; --quick, --out
import minidiff as md
from minidiff import backend
from minidiff.diffusion import (NoiseSchedule, bits_per_dim, discretized_gaussian_log_likelihood,
                                loss_simple, normal_kl, prior_term, q_mean_variance, q_posterior,
                                q_sample, vlb_term_at, vlb_terms)

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
# The model's likelihood p_theta(x_0) = integral p_theta(x_{0:T}) dx_{1:T} sums over every
# path of latents: intractable.  As in a VAE, bring in a distribution over the latents — here
# the forward process q(x_{1:T} | x_0), a fixed "encoder" with no parameters — and use Jensen's
# inequality (log is concave):
#
#     -log p_theta(x_0) = -log E_q[ p_theta(x_{0:T}) / q(x_{1:T} | x_0) ]
#                      <= E_q[ -log p_theta(x_{0:T}) / q(x_{1:T} | x_0) ] =: L.             (4.1)
#
# ## 2. Splitting the bound
#
# p_theta(x_{0:T}) = p(x_T) prod_t p_theta(x_{t-1} | x_t) and
# q(x_{1:T}|x_0) = prod_t q(x_t|x_{t-1}).
# For t >= 2 rewrite each forward factor with Bayes (condition on x_0, Markov property):
# q(x_t | x_{t-1}) = q(x_{t-1} | x_t, x_0) q(x_t | x_0) / q(x_{t-1} | x_0).  The ratios
# q(x_t|x_0)/q(x_{t-1}|x_0) telescope over t = 2..T to q(x_T|x_0)/q(x_1|x_0), which leaves
#
#     L = E_q[ KL(q(x_T | x_0) || p(x_T))                                         L_T
#            + sum_{t=2}^T KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))        L_{t-1}
#            - log p_theta(x_0 | x_1) ].                                          L_0     (4.2)
#
# The identity behind it holds for every trajectory:
# log q(x_{1:T} | x_0) = log q(x_T | x_0) + sum_{t>=2} log q(x_{t-1} | x_t, x_0).  Check it:

# %%
schedule = NoiseSchedule.linear(50, 1e-3, 0.2)
betas, T = host(schedule.betas), schedule.num_timesteps
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
assert np.allclose(lhs, rhs, rtol=1e-9, atol=1e-8)

# %% [markdown]
# ## 3. L_T, and the KL of two Gaussians
#
# L_T compares q(x_T | x_0) = N(sqrt(abar_T) x_0, 1 - abar_T) with the prior N(0, I).  Neither
# has a parameter (the schedule is fixed), so L_T is a constant for training — and tiny for a
# good schedule (lesson 01, (1.4)).  Every KL here is between Gaussians, per dimension
#
#     KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2   (4.3)
#
# (`normal_kl`, with log-variances).  A Monte-Carlo check of (4.3):
# E_{x ~ N1}[log N1(x) - log N2(x)].

# %%
m1, s1, m2, s2 = 0.3, 0.5, -0.2, 0.8
xs = m1 + s1 * host(backend.randn(N))
mc = log_normal(xs, m1, s1 ** 2) - log_normal(xs, m2, s2 ** 2)
kl = float(host(normal_kl(dev(m1), dev(2 * math.log(s1)), dev(m2), dev(2 * math.log(s2)))))
show("KL: formula (4.3) vs Monte Carlo", (round(kl, 4), round(float(mc.mean()), 4)))
assert abs(kl - mc.mean()) < 5 * mc.std() / math.sqrt(N)
paper = NoiseSchedule.linear(1000)
l_T = host(prior_term(paper, dev([[1.0], [-1.0], [0.0]])))
show("L_T for the paper's schedule, x_0 = 1, -1, 0", np.round(l_T, 8))
assert l_T.max() < 1e-4

# %% [markdown]
# ## 4. L_{t-1} in terms of the noise
#
# With p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2) (3.5) and the posterior N(mu~_t, beta~_t),
# (4.3) is
#
#     L_{t-1} = ||mu~_t - mu_theta||^2 / (2 sigma_t^2) + C,   C independent of theta;     (4.4)
#
# with sigma_t^2 = beta~_t, C = 0.  Write x_0 through x_t and the true noise (2.5): the posterior
# mean (3.4) becomes mu~_t = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(a_t), the same form
# as the model's mean (3.7) with eps_theta in place of eps.  Subtracting,
#
#     mu~_t - mu_theta = beta_t / (sqrt(a_t) sqrt(1 - abar_t)) (eps_theta - eps),
#     L_{t-1} = beta_t^2 / (2 sigma_t^2 a_t (1 - abar_t)) ||eps - eps_theta(x_t, t)||^2.     (4.5)
#
# Check (4.5) against `vlb_term_at` (which evaluates the KL (4.3) directly) for an arbitrary
# stand-in "network" eps_theta(x, t) = 0.7 x, with the same noise draw for both:

# %%
def toy_model(x, t):
    return 0.7 * x


n = 6
x0_batch = dev(np.round(np.linspace(-1, 1, n) * 127.5) / 127.5)[:, None]
t_batch = backend.to_device(np.array([1, 5, 10, 20, 35, 49]))
eps = backend.randn(n, 1)
kl_terms = host(vlb_term_at(schedule, toy_model, x0_batch, t_batch, noise=eps))
x_t = q_sample(schedule, x0_batch, t_batch, eps)
err = host((toy_model(x_t, None) - eps) ** 2)[:, 0]
tb = host(t_batch)
abar = host(schedule.alphas_cumprod)
weight = betas[tb] ** 2 / (2 * host(schedule.posterior_variance)[tb] * (1 - betas[tb])
                            * (1 - abar[tb]))
show("KL (4.3) vs weighted noise error (4.5)", (np.round(kl_terms, 5), np.round(weight * err, 5)))
assert np.allclose(kl_terms, weight * err, rtol=1e-8, atol=1e-12)

# %% [markdown]
# ## 5. L_simple
#
# Ho et al. found that dropping the weight in (4.5) trains better:
#
#     L_simple = E_{t ~ U{1..T}, x_0, eps} ||eps - eps_theta(x_t, t)||^2,
#     x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                                     (4.6)
#
# With sigma_t^2 = beta~_t (3.3) the weight simplifies to beta_t / (2 a_t (1 - abar_{t-1})):
# large at small t, where 1 - abar_{t-1} is tiny and the task is easy (a little noise on a clear
# image), and about beta_t / 2, far below 1, once the signal is gone.  Dropping it shifts
# effort towards the noisier steps that decide the global structure of a sample — a
# re-weighted bound that is no longer a likelihood bound, but gives better samples.
# (Min-SNR-gamma, eq. (4.9), goes further: weight min(snr_t, gamma) on the x_0 error, i.e.
# min(snr_t, gamma)/snr_t on the eps error, which caps the weight of the low-noise steps.)
#
# `loss_simple(prediction, eps)` is the batch mean of (4.6); with a Tensor prediction it
# returns a Tensor and gradients flow back into the network.

# %%
weights_all = betas ** 2 / (2 * np.maximum(host(schedule.posterior_variance), 1e-300)
                            * (1 - betas) * (1 - abar))
show("weight of (4.5) at steps 2, 25, 50", np.round(weights_all[[1, 24, 49]], 4))
simplified = betas[1:] / (2 * (1 - betas[1:]) * (1 - host(schedule.alphas_cumprod_prev)[1:]))
assert np.allclose(weights_all[1:], simplified, rtol=1e-10)
assert weights_all[1] > 10 * weights_all[24] and weights_all[24:].max() < 0.5
pred = md.tensor(host(backend.randn(n, 1)), requires_grad=True)
loss = loss_simple(pred, eps)
loss.backward()
show("L_simple (4.6) and its gradient check", round(loss.item(), 5))
assert abs(loss.item() - float(((host(pred) - host(eps)) ** 2).mean())) < 1e-12
assert np.allclose(host(pred.grad), 2 * (host(pred) - host(eps)) / n)

# %% [markdown]
# ## 6. L_0 and bits per dimension
#
# Image data is discrete: 256 levels scaled to [-1, 1], spaced 2/255.  The last step scores a
# level by the Gaussian mass of its bin,
#
#     p_theta(x_0 | x_1) = integral_{x_0 - 1/255}^{x_0 + 1/255} N(y; mu_theta(x_1, 1), sigma_1^2) dy
#                                                                                    (4.7)
#
# with the two edge bins extended to -inf and +inf so the 256 probabilities sum to one.  The
# bound in nats per dimension divided by ln 2 is the usual *bits per dim* (4.8): the cost of
# coding the data with the model (8 bits per dim is what storing raw bytes costs).  We evaluate
# it for our stand-in model on a few 8-bit values: every term, and a Monte-Carlo estimate that
# samples t instead of summing all T terms.  (The stand-in eps_theta = 0.7 x is a poor model:
# it costs more than the 8 bits of the raw bytes.  Training is what brings this number down.)

# %%
levels = np.linspace(-1, 1, 256)
probs = np.exp(host(discretized_gaussian_log_likelihood(dev(levels), dev(np.full(256, 0.2)),
                                                        dev(np.full(256, math.log(0.3))))))
show("sum over 256 bins of p(x_0 | x_1) (4.7)", round(float(probs.sum()), 12))
assert abs(probs.sum() - 1) < 1e-6
data = dev(np.round(host(backend.rand(64 if args.quick else 512, 2)) * 255) / 127.5 - 1)
terms = vlb_terms(schedule, toy_model, data)
full = bits_per_dim(schedule, toy_model, data)
mc = bits_per_dim(schedule, toy_model, data, num_samples=4 if args.quick else 16)
total = host(terms["prior"]) + host(terms["terms"]).sum(axis=1)
assert (host(terms["terms"])[:, 1:] >= -1e-12).all()       # every L_t is a KL (4.3): >= 0
# vlb_terms and bits_per_dim draw their own noise: two estimates of the same bound (4.8)
total_se = total.std(ddof=1) / math.sqrt(total.size) / math.log(2)
assert abs(total.mean() / math.log(2) - full["bpd"]) < 5 * math.hypot(total_se, full["stderr"])
show("bits/dim: full bound (4.8)", f"{full['bpd']:.3f} +- {full['stderr']:.3f}")
show("bits/dim: Monte Carlo over t", f"{mc['bpd']:.3f} +- {mc['stderr']:.3f}")
assert abs(mc["bpd"] - full["bpd"]) < 5 * math.hypot(mc["stderr"], full["stderr"])

plt = pyplot()   # None without matplotlib: the figures are then skipped
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].semilogy(np.arange(1, T), weights_all[1:], label="weight of (4.5), sigma^2 = beta~")
    axes[0].axhline(1.0, color="k", ls="--", lw=1, label="L_simple (4.6)")
    axes[0].set_xlabel("index t (= step t+1)")
    axes[0].set_title("how each step is weighted")
    axes[0].legend(fontsize=8)
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
