# %% [markdown]
# # Lesson 02 — The closed form: jumping to any x_t in one step
#
# Training picks a random step t for every example.  Running (1.2) t times for each would
# cost O(T) per example; this lesson shows that q(x_t | x_0) is a Gaussian we can sample
# directly, and introduces the quantities every later lesson uses.
#
# Sections:
#
# 1. The reparameterization trick, eq. (2.1)
# 2. Expanding the recursion two steps, eq. (2.2)
# 3. Two Gaussians make one, eq. (2.3) — in full
# 4. The closed form and sampling any x_t in one step, eq. (2.4); x_0 from noise, eq. (2.5)
# 5. The velocity v and the signal-to-noise ratio, eq. (2.6) and (2.7)
# 6. Schedules: linear, cosine, scaled linear, eq. (2.8)-(2.10); a figure
#
#     python lessons/02_closed_form.py [--quick] [--out DIR]

# %%
import math

from _lesson import lesson_parser, pyplot, show, start  # finds minidiff; --quick, --out
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
# A sample z ~ N(mu, sigma^2) can be written as a deterministic function of a standard normal:
#
#     z = mu + sigma eps,   eps ~ N(0, 1).                                           (2.1)
#
# This moves the randomness into eps, which does not depend on mu or sigma — the trick that lets
# gradients flow through samples in a VAE, and here the trick that lets us *add* Gaussian steps
# by adding their eps.  Step (1.2) is (2.1) with mu = sqrt(alpha_t) x_{t-1}, sigma = sqrt(beta_t).

# %%
mu, sigma = 0.7, 0.3
z = mu + sigma * randn(N)
show("mean, std of mu + sigma eps (2.1)", (round(float(z.mean()), 3), round(float(z.std()), 3)))
assert abs(z.mean() - mu) < 5 * sigma / math.sqrt(N)

# %% [markdown]
# ## 2. Two steps of the recursion
#
# Write the step (1.2) for t (noise eps_2) and for t-1 (noise eps_1, independent of eps_2) and
# substitute the second into the first:
#
#     x_t = sqrt(a_t) x_{t-1} + sqrt(1 - a_t) eps_2
#         = sqrt(a_t) (sqrt(a_{t-1}) x_{t-2} + sqrt(1 - a_{t-1}) eps_1) + sqrt(1 - a_t) eps_2
#         = sqrt(a_t a_{t-1}) x_{t-2} + [ sqrt(a_t (1 - a_{t-1})) eps_1 + sqrt(1 - a_t) eps_2 ]
#                                                                                     (2.2)
# with a_t = alpha_t = 1 - beta_t.  The bracket is a sum of two independent zero-mean Gaussians.
#
# ## 3. Two Gaussians make one
#
# Claim: sqrt(a_t (1 - a_{t-1})) eps_1 + sqrt(1 - a_t) eps_2 ~ N(0, 1 - a_t a_{t-1}).
#
# *It is Gaussian.*  Independent Gaussians are jointly Gaussian, and a linear combination of a
# jointly Gaussian vector is Gaussian.  (Directly: the characteristic function of c eps is
# exp(-c^2 s^2 / 2); for independent terms characteristic functions multiply, giving
# exp(-(c_1^2 + c_2^2) s^2 / 2), the characteristic function of N(0, c_1^2 + c_2^2).)
#
# *Its mean* is c_1 E[eps_1] + c_2 E[eps_2] = 0.
#
# *Its variance*: variances of independent terms add, Var(c eps) = c^2, so
#
#     a_t (1 - a_{t-1}) + (1 - a_t) = a_t - a_t a_{t-1} + 1 - a_t = 1 - a_t a_{t-1}.   (2.3)
#
# So x_t = sqrt(a_t a_{t-1}) x_{t-2} + sqrt(1 - a_t a_{t-1}) eps with a single eps ~ N(0, 1):
# two steps are one step with alpha = a_t a_{t-1}.  Check by Monte Carlo: compare both ways.

# %%
a_t, a_prev = 0.9, 0.8
eps1, eps2 = randn(N), randn(N)
merged = math.sqrt(a_t * (1 - a_prev)) * eps1 + math.sqrt(1 - a_t) * eps2
show("var of the two-noise sum, vs 1 - a_t a_{t-1} (2.3)",
     (round(float(merged.var()), 4), round(1 - a_t * a_prev, 4)))
assert abs(merged.var() - (1 - a_t * a_prev)) < 6 * (1 - a_t * a_prev) * math.sqrt(2 / N)
# Gaussian: the fourth moment is 3 var^2 (excess kurtosis 0)
kurtosis = float((merged ** 4).mean() / merged.var() ** 2)
show("kurtosis (3 for a Gaussian)", round(kurtosis, 3))
assert abs(kurtosis - 3) < 30 / math.sqrt(N)

# %% [markdown]
# ## 4. The closed form
#
# Repeating the merge down to x_0 (induction on t: the merged step from x_0 to x_{t-1} has
# alpha = alphabar_{t-1}; merging with step t gives alphabar_{t-1} a_t = alphabar_t):
#
#     q(x_t | x_0) = N(x_t; sqrt(alphabar_t) x_0, (1 - alphabar_t) I),
#     x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps,    eps ~ N(0, I).          (2.4)
#
# This is `minidiff.diffusion.q_sample(schedule, x0, t, eps)`; t is a vector (one step per
# item, 0-based: index t is the paper's step t + 1).  Knowing eps and x_t, (2.4) solves for x_0:
#
#     x_0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)                         (2.5)
#
# — `predict_x0_from_eps`, how a noise-predicting network yields a guess of the clean data.
#
# Check: the chain run step by step (1.2) and q_sample give the same distribution at t = 400.

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
assert abs(chain.mean() - direct.mean()) < 5 * se_m
assert abs(chain.var() - direct.var()) < 5 * se_v
assert abs(direct.mean() - math.sqrt(abar) * 0.6) < 5 * math.sqrt((1 - abar) / N)
back = backend.to_host(predict_x0_from_eps(schedule, backend.to_device(direct),
                                           backend.to_device(t), backend.to_device(eps)))
assert np.allclose(back, x0, atol=1e-10)
show("x_0 recovered from (x_t, eps) (2.5)", bool(np.allclose(back, x0, atol=1e-10)))

# %% [markdown]
# ## 5. Velocity and signal-to-noise ratio
#
# Since alphabar_t + (1 - alphabar_t) = 1, put cos phi_t = sqrt(alphabar_t) and
# sin phi_t = sqrt(1 - alphabar_t): (2.4) is x_t = cos phi x_0 + sin phi eps, a point on a
# circle in the (x_0, eps) plane.  The *velocity* is the direction along that circle:
#
#     v = d x_t / d phi = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t) x_0,            (2.6)
#     x_0 = sqrt(alphabar_t) x_t - sqrt(1 - alphabar_t) v,
#     eps = sqrt(1 - alphabar_t) x_t + sqrt(alphabar_t) v
#
# (a rotation, so |x_t|^2 + |v|^2 = |x_0|^2 + |eps|^2).  Networks may predict eps, x_0 or v:
# all three carry the same information given x_t.  How much signal is left at step t:
#
#     snr_t = alphabar_t / (1 - alphabar_t)                                            (2.7)
#
# which falls from ~1e4 to ~4e-5 over the paper's schedule.

# %%
rng_x0 = randn(8, 3)
rng_eps = randn(8, 3)
tt = backend.to_device(np.arange(0, 1000, 125))
dx0, deps = backend.to_device(rng_x0), backend.to_device(rng_eps)
x_t = q_sample(schedule, dx0, tt, deps)
v = predict_v(schedule, dx0, tt, deps)
lengths = backend.to_host(x_t ** 2 + v ** 2 - dx0 ** 2 - deps ** 2)
assert np.abs(lengths).max() < 1e-10
assert np.allclose(backend.to_host(predict_x0_from_v(schedule, x_t, tt, v)), rng_x0, atol=1e-10)
assert np.allclose(backend.to_host(predict_eps_from_v(schedule, x_t, tt, v)), rng_eps, atol=1e-10)
snr = backend.to_host(schedule.snr)
show("rotation keeps lengths (2.6)", True)
show("snr at steps 1 and T (2.7)", (f"{snr[0]:.3g}", f"{snr[-1]:.3g}"))
assert (np.diff(snr) < 0).all()

# %% [markdown]
# ## 6. Schedules
#
#     linear:        beta_t evenly spaced in [1e-4, 0.02]                    (Ho et al.) (2.8)
#     cosine:        alphabar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
#                    beta_t = min(1 - alphabar(t)/alphabar(t-1), 0.999)   (Nichol & Dhariwal) (2.9)
#     scaled linear: sqrt(beta_t) evenly spaced in [sqrt(0.00085), sqrt(0.012)]  (LDM) (2.10)
#
# The linear schedule destroys information fast: log snr is already negative by t ~ 300 and
# the last third of the steps see almost pure noise.  The cosine schedule spends its steps more
# evenly in log snr.  The small offset s = 0.008 keeps beta_1 from being too small.

# %%
cosine = NoiseSchedule.cosine(1000)
scaled = NoiseSchedule.scaled_linear(1000)
f = [math.cos(((k / 1000) + 0.008) / 1.008 * math.pi / 2) ** 2 for k in range(1001)]
assert abs(float(backend.to_host(cosine.alphas_cumprod)[499]) - f[500] / f[0]) < 1e-12
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
