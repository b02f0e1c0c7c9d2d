# %% [markdown]
# # Lesson 03 — The reverse process
#
# To generate data we run the forward chain backwards: draw x_T ~ N(0, I), then x_{T-1} from
# q(x_{T-1} | x_T), and so on.  This lesson shows why q(x_{t-1} | x_t) is out of reach for real
# data, computes it anyway for a toy data set of three points, derives the posterior
# q(x_{t-1} | x_t, x_0) that *is* tractable, and builds the model's reverse step from it.
#
# Sections:
#
# 1. Bayes' rule for q(x_{t-1} | x_t), and why it is intractable, eq. (3.1)
# 2. A toy data set where it is computable: a mixture of posteriors, eq. (3.2)
# 3. The posterior q(x_{t-1} | x_t, x_0) by completing the square, eq. (3.3) and (3.4)
# 4. The model p_theta(x_{t-1} | x_t), its variance and its eps-parameterized mean, (3.5)-(3.7)
# 5. Sampling (Algorithm 2) with the exact noise predictor of the toy data; a figure
#
#     python lessons/03_reverse_process.py [--quick] [--out DIR]

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
#     q(x_{t-1} | x_t) = q(x_t | x_{t-1}) q(x_{t-1}) / q(x_t),
#     q(x_{t-1}) = integral q(x_{t-1} | x_0) p_data(x_0) dx_0.                         (3.1)
#
# The first factor is the known step (1.1), but the marginal q(x_{t-1}) averages over the whole
# data distribution: for images that is an integral over every possible image.  That is what
# we cannot compute, and what the network will learn to approximate.
#
# ## 2. A data set of three points
#
# If p_data puts weight pi_k on a few points c_k, the integral is a finite sum.  Writing
# q(x_{t-1}) q(x_t | x_{t-1}) = sum_k pi_k q(x_{t-1} | c_k) q(x_t | x_{t-1}) and using the
# posterior of section 3 on each term,
#
#     q(x_{t-1} | x_t) = sum_k w_k(x_t) q(x_{t-1} | x_t, x_0 = c_k),
#     w_k(x_t) = pi_k N(x_t; sqrt(abar_t) c_k, 1 - abar_t) / sum_j (same for j)           (3.2)
#
# — a mixture of Gaussians, one per data point, weighted by how likely each point is to have
# produced x_t.  It is not Gaussian; but when beta_t is small each component is narrow and they
# are weighted towards one mode, so a single Gaussian approximates it well.  We use a coarse
# schedule (T = 10, large betas) to make the difference visible, and check (3.2) against a
# direct numerical evaluation of (3.1) on a grid.

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
assert np.abs(bayes - mixture).max() < 1e-6
mix_mean = float(resp @ means)
mix_var = float(resp @ (var + means ** 2) - mix_mean ** 2)
show("responsibilities w_k(x_t)", np.round(resp, 3))

# %% [markdown]
# ## 3. The posterior given x_0, by completing the square
#
# Conditioning on x_0 as well removes the integral: by Bayes and the Markov property,
#
#     q(x_{t-1} | x_t, x_0) = q(x_t | x_{t-1}) q(x_{t-1} | x_0) / q(x_t | x_0).
#
# All three are Gaussians we know ((1.1) and (2.4)).  Keep only what depends on y = x_{t-1}:
#
#     log q = -1/2 [ (x_t - sqrt(a_t) y)^2 / beta_t
#                    + (y - sqrt(abar_{t-1}) x_0)^2 / (1 - abar_{t-1}) ]
#           = -1/2 [ (a_t / beta_t + 1 / (1 - abar_{t-1})) y^2
#                    - 2 (sqrt(a_t) x_t / beta_t + sqrt(abar_{t-1}) x_0 / (1 - abar_{t-1})) y ] + C.
#
# A quadratic -1/2 (A y^2 - 2 B y) is -(y - B/A)^2 / (2/A) + C': a Gaussian with variance 1/A
# and mean B/A.  With a_t = 1 - beta_t and abar_t = a_t abar_{t-1},
#
#     A = (a_t (1 - abar_{t-1}) + beta_t) / (beta_t (1 - abar_{t-1}))
#       = (1 - abar_t) / (beta_t (1 - abar_{t-1})),
#
#     beta~_t = 1/A = beta_t (1 - abar_{t-1}) / (1 - abar_t),                            (3.3)
#
#     mu~_t = B/A = [beta_t sqrt(abar_{t-1}) / (1 - abar_t)] x_0
#                 + [(1 - abar_{t-1}) sqrt(a_t) / (1 - abar_t)] x_t.                       (3.4)
#
# The two brackets are `posterior_mean_coef1` and `posterior_mean_coef2` of `NoiseSchedule`;
# `q_posterior` returns (mu~, beta~, log beta~).  Check against a grid evaluation of Bayes:

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
assert abs(grid_mean - host(mean_f).item()) < 1e-6 and abs(grid_var - host(var_f).item()) < 1e-6

# %% [markdown]
# ## 4. The model's reverse step
#
# We approximate each reverse conditional by a Gaussian
#
#     p_theta(x_{t-1} | x_t) = N(x_{t-1}; mu_theta(x_t, t), sigma_t^2 I).                   (3.5)
#
# *Variance* (3.6): Ho et al. fix it.  sigma_t^2 = beta~_t ("fixed_small") is exact when the
# data is a single point; sigma_t^2 = beta_t ("fixed_large") is exact for x_0 ~ N(0, I).
#
# *Mean* (3.7): the best mu_theta is E[x_{t-1} | x_t] = coef1 E[x_0 | x_t] + coef2 x_t, the
# posterior mean (3.4) at the network's guess of x_0.  A network predicting the noise eps
# gives that guess through (2.5), and substituting into (3.4) simplifies to
#
#     mu_theta = (1 / sqrt(a_t)) (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)).      (3.7)
#
# For the toy data the optimal predictor is known: eps*(x_t) = (x_t - sqrt(abar_t) E[x_0|x_t])
# / sqrt(1 - abar_t) with E[x_0 | x_t] = sum_k w_k c_k.  Then `p_mean_variance`'s mean must
# equal the mean of the true mixture (3.2).

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


model = exact_eps(coarse)
eps_star = model(dev([[x_t]]), backend.to_device(np.array([index])))
out = p_mean_variance(coarse, eps_star, dev([[x_t]]), dev([index]), clip_x0=False)
show("mixture mean vs mu_theta with eps* (3.7)", (round(mix_mean, 6),
                                                  round(float(host(out["mean"]).item()), 6)))
assert abs(mix_mean - host(out["mean"]).item()) < 1e-10
show("mixture var vs beta~ (fixed_small) (3.6)", (round(mix_var, 4), round(var, 4)))
assert mix_var > var  # the mixture is wider than one component: fixed_small underestimates

# %% [markdown]
# ## 5. Sampling
#
# Algorithm 2 of Ho et al.: x_T ~ N(0, I); for t = T..1, x_{t-1} = mu_theta(x_t, t) + sigma_t z;
# the last step (t = 1) returns the mean without noise.  With the exact eps* and the paper's
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
