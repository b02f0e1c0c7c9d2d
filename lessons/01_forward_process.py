# %% [markdown]
# # Lesson 01 — The forward process: destroying data one small step at a time
#
# A diffusion model learns to *undo* a fixed process that turns data into noise.  This lesson
# builds that process, the "forward" or "diffusion" process of Ho et al. (2020), and shows why
# after enough steps nothing of the data is left: $x_T$ is (very nearly) a standard normal.
#
# Sections:
#
# 1. One noising step, eq. (1.1) and (1.2)
# 2. Running the chain on toy data, and what it does to mean and variance, eq. (1.3)
# 3. As $T$ grows, $x_T$ tends to $\mathcal{N}(0, I)$: the KL to the prior, eq. (1.4)
# 4. A figure: a 2-D toy data set dissolving into noise
#
# ```
# python lessons/01_forward_process.py            # the full lesson
# python lessons/01_forward_process.py --quick    # a fast pass (used by the tests)
# python lessons/01_forward_process.py --out DIR  # where the figure goes (runs/lessons)
# ```

# %%
import math

from _lesson import lesson_parser, pyplot, show, start  # finds minidiff; --quick, --out
import minidiff as md
from minidiff import backend
from minidiff.diffusion import NoiseSchedule, prior_term, q_mean_variance, q_sample

np = backend.host  # NumPy, for host-side numbers in this lesson

args, out_dir = start(lesson_parser("Lesson 01: the forward process", "a fast pass (fewer samples)"), dtype="float64")
N = 2000 if args.quick else 20000


# %% [markdown]
# ## 1. One step
#
# Pick a sequence of small variances $\beta_1 < \dots < \beta_T$ (the *noise schedule*).
# Step $t$ shrinks the previous sample a little and adds a little Gaussian noise:
#
# $$
# q(x_t \mid x_{t-1}) = \mathcal{N}\big(x_t;\, \sqrt{1 - \beta_t}\, x_{t-1},\, \beta_t I\big)
# \tag{1.1}
# $$
#
# or, written as a sampling recipe with $\alpha_t = 1 - \beta_t$ and
# $\epsilon \sim \mathcal{N}(0, I)$,
#
# $$
# x_t = \sqrt{\alpha_t}\, x_{t-1} + \sqrt{\beta_t}\, \epsilon .
# \tag{1.2}
# $$
#
# Why shrink by $\sqrt{1 - \beta_t}$?  If $x_{t-1}$ has unit variance, $x_t$ has variance
# $(1 - \beta_t) \cdot 1 + \beta_t = 1$: the step keeps unit-variance data at unit variance, so
# the process has a fixed point, $\mathcal{N}(0, I)$, instead of blowing up.
#
# The paper's schedule: $T = 1000$, $\beta_t$ linear from $10^{-4}$ to $0.02$.  In minidiff,
# arrays are 0-based: `betas[0]` is $\beta_1$, index $t$ holds the paper's step $t + 1$.
# The check: one step of (1.2) written out here is the library's `q_sample` at step 1 (whose
# closed form (2.4) lesson 02 derives; at $t = 1$ it must reduce to (1.2)), for the same noise.

# %%
schedule = NoiseSchedule.linear(1000)
betas = backend.to_host(schedule.betas)
show("beta_1, beta_T (1.1)", (float(betas[0]), float(betas[-1])))
assert betas[0] == 1e-4 and abs(betas[-1] - 0.02) < 1e-15
x = np.linspace(-1, 1, 9)
noise = backend.to_host(md.backend.randn(9))
y = math.sqrt(1 - betas[0]) * x + math.sqrt(betas[0]) * noise                       # (1.2)
library = backend.to_host(q_sample(schedule, backend.to_device(x[:, None]),
                                   backend.to_device(np.zeros(9, dtype=np.int64)),
                                   backend.to_device(noise[:, None])))[:, 0]
show("one step (1.2) vs q_sample at step 1", f"max diff {np.abs(y - library).max():.1e}")
assert np.allclose(y, library, rtol=0, atol=1e-14), "(1.2) against q_sample at step 1"

# %% [markdown]
# ## 2. The chain, and its mean and variance
#
# Apply (1.2) $T$ times to a toy data set: three points on the line, $-0.8$, $0.1$ and $0.7$.
# Each step is linear in $x_{t-1}$ plus independent noise, so if $x_{t-1}$ has mean $m$ and
# variance $v$, $x_t$ has mean $\sqrt{\alpha_t}\, m$ and variance $\alpha_t v + \beta_t$.
# Unrolled from $x_0$ this gives
#
# $$
# \mathbb{E}[x_t \mid x_0] = \sqrt{\bar\alpha_t}\, x_0, \qquad
# \operatorname{Var}[x_t \mid x_0] = 1 - \bar\alpha_t, \qquad
# \bar\alpha_t = \alpha_1 \alpha_2 \cdots \alpha_t
# \tag{1.3}
# $$
#
# (the variance recursion $v_t = \alpha_t v_{t-1} + 1 - \alpha_t$ has
# $1 - v_t = \alpha_t (1 - v_{t-1})$, so $1 - v_t = \bar\alpha_t$ when $v_0 = 0$).  Lesson 02
# proves the stronger statement that $x_t \mid x_0$ is exactly this Gaussian.  Here we run the
# chain and compare with `minidiff.diffusion.q_mean_variance`.

# %%
data = np.array([-0.8, 0.1, 0.7])
x0 = data[backend.to_host(md.backend.randint(0, 3, N))]
x = x0.copy()
checkpoints = {0: x.copy()}
for t, beta in enumerate(betas):
    x = math.sqrt(1 - beta) * x + math.sqrt(beta) * backend.to_host(md.backend.randn(N))
    if t + 1 in (10, 100, 300, 1000):
        checkpoints[t + 1] = x.copy()
for step in (10, 100, 300, 1000):
    index = step - 1  # 0-based index of the paper's step
    for point in data:
        sel = x0 == point
        mean, var, _ = q_mean_variance(schedule, backend.to_device(np.array([[point]])),
                                       backend.to_device(np.array([index])))
        m, v = float(backend.to_host(mean).item()), float(backend.to_host(var).item())
        emp = checkpoints[step][sel]
        assert abs(emp.mean() - m) < 5 * math.sqrt(v / sel.sum()) + 1e-12, "(1.3) mean"
        assert abs(emp.var() - v) < 6 * v * math.sqrt(2 / sel.sum()) + 1e-12, "(1.3) variance"
    show(f"t={step}: chain mean|x0=0.7 vs (1.3)",
         (round(float(checkpoints[step][x0 == 0.7].mean()), 4), round(m, 4)))

# %% [markdown]
# ## 3. As $T$ grows, $x_T$ tends to $\mathcal{N}(0, I)$
#
# By (1.3) the data's trace in $x_T$ is the factor $\sqrt{\bar\alpha_T}$, and
# $\log \bar\alpha_T = \sum_t \log(1 - \beta_t) \approx -\sum_t \beta_t$, which goes to
# $-\infty$ as $T$ grows (for the paper's schedule, $\sum_t \beta_t \approx 10$ at $T = 1000$,
# so $\bar\alpha_T \approx e^{-10}$).  How far $q(x_T \mid x_0)$ is from the prior
# $\mathcal{N}(0, 1)$ is measured by a KL divergence (lesson 04, (4.3)), per dimension
#
# $$
# D_{\mathrm{KL}}\big(\mathcal{N}(\sqrt{\bar\alpha_T}\, x_0, 1 - \bar\alpha_T) \,\|\, \mathcal{N}(0, 1)\big)
#   = \tfrac{1}{2}\big(\bar\alpha_T x_0^2 + (1 - \bar\alpha_T) - 1 - \log(1 - \bar\alpha_T)\big)
# \tag{1.4}
# $$
#
# and since $-\log(1 - \bar\alpha) = \bar\alpha + \bar\alpha^2/2 + \dots$, (1.4) is
# $\tfrac12 \bar\alpha_T x_0^2 + \bar\alpha_T^2/4 + \dots \to 0$ with $\bar\alpha_T$.
# Check (1.4) first against the definition of the KL, $\int q \log (q/p)$, integrated on a
# grid, and against the library's `prior_term` (which computes it through (4.3)) and
# `NoiseSchedule.prior_kl` ($x_0 = 0$).  Then keep the paper's range of betas fixed and grow $T$:

# %%
def kl_to_prior(abar_T, x0):
    return 0.5 * (abar_T * x0 ** 2 + (1 - abar_T) - 1 - math.log(1 - abar_T))   # (1.4)


def check_prior_kl():
    short = NoiseSchedule.linear(10)          # T = 10: a KL large enough to integrate
    abar_T = float(backend.to_host(short.alphas_cumprod)[-1])
    grid = np.linspace(-12, 12, 200001)
    for x0 in (1.0, -0.5, 0.0):
        var = 1 - abar_T
        log_q = (-0.5 * (grid - math.sqrt(abar_T) * x0) ** 2 / var
                 - 0.5 * math.log(2 * math.pi * var))
        log_p = -0.5 * grid ** 2 - 0.5 * math.log(2 * math.pi)
        integral = float(np.sum(np.exp(log_q) * (log_q - log_p)) * (grid[1] - grid[0]))
        library = float(backend.to_host(prior_term(short, backend.to_device(np.array([[x0]]))))[0])
        show(f"T=10, x_0={x0:+.1f}: grid, (1.4), prior_term",
             (round(integral, 8), round(kl_to_prior(abar_T, x0), 8), round(library, 8)))
        assert abs(integral - kl_to_prior(abar_T, x0)) < 1e-8, "(1.4) against the grid"
        assert abs(library - integral) < 1e-8, "(1.4): prior_term against the grid"
    assert abs(short.prior_kl() - kl_to_prior(abar_T, 0.0)) < 1e-12, "(1.4): prior_kl"


check_prior_kl()
previous = float("inf")
for T in (10, 50, 100, 300, 1000):
    sched = NoiseSchedule.linear(T)
    abar_T = float(backend.to_host(sched.alphas_cumprod)[-1])
    kl = kl_to_prior(abar_T, 1.0)                                     # (1.4), |x_0| = 1
    show(f"T={T}: alphabar_T, KL to N(0,1) (1.4)", (f"{abar_T:.3g}", f"{kl:.3g}"))
    assert kl < previous
    previous = kl
assert previous < 1e-4  # the paper's T = 1000: the prior is matched to 1e-4 nats per dim
final = checkpoints[1000]
show("x_T sample mean, var (expect 0, 1)",
     (round(float(final.mean()), 3), round(float(final.var()), 3)))
assert abs(final.mean()) < 5 / math.sqrt(N) and abs(final.var() - 1) < 6 * math.sqrt(2 / N)

# %% [markdown]
# ## 4. A 2-D picture
#
# Points on a spiral, noised with (1.2) step by step; snapshots along the way.  The schedule
# does little at first ($\beta_t$ is small) and the last few hundred steps only polish a cloud
# that is already Gaussian.  The last panel shows $\bar\alpha_t$ for the linear and cosine
# schedules (lesson 02, (2.8)-(2.9)).

# %%
n2 = 500 if args.quick else 3000
angle = np.sqrt(backend.to_host(md.backend.rand(n2))) * 3 * math.pi
spiral = np.stack([angle * np.cos(angle), angle * np.sin(angle)], axis=1) / (3 * math.pi)
frames, x2 = {0: spiral}, spiral.copy()
for t, beta in enumerate(betas):
    x2 = math.sqrt(1 - beta) * x2 + math.sqrt(beta) * backend.to_host(md.backend.randn(n2, 2))
    if t + 1 in (20, 150, 1000):
        frames[t + 1] = x2
assert abs(frames[1000].std() - 1) < 0.15

plt = pyplot()   # None without matplotlib: the figures are then skipped
if plt is not None:
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4))
    for ax, (step, pts) in zip(axes, frames.items()):
        ax.scatter(pts[:, 0], pts[:, 1], s=2)
        ax.set_xlim(-3.5, 3.5)
        ax.set_ylim(-3.5, 3.5)
        ax.set_aspect("equal")
        ax.set_title(f"x_{step}" if step else "x_0 (data)")
    cosine = NoiseSchedule.cosine(1000)
    axes[4].plot(backend.to_host(schedule.alphas_cumprod), label="linear (paper)")
    axes[4].plot(backend.to_host(cosine.alphas_cumprod), label="cosine")
    axes[4].set_xlabel("index t (= step t+1)")
    axes[4].set_title("alphabar_t (1.3)")
    axes[4].legend(fontsize=8)
    fig.tight_layout()
    figure = out_dir / "01_forward_process.png"
    fig.savefig(figure, dpi=100)
    plt.close(fig)
    show("figure", figure)
    assert figure.stat().st_size > 0

# %% [markdown]
# ## 5. The same on a digit
#
# One MNIST test digit, scaled to $[-1, 1]$, noised in one jump to step $t$ with the closed
# form that lesson 02 derives, $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon$
# (the same $\epsilon$ in every panel), under the linear schedule (top) and the cosine one
# (bottom).  The linear schedule has erased the digit by $t \approx 500$; the cosine one keeps
# a trace of it for longer.

# %%
from minidiff.data.mnist import load_mnist, to_unit_range  # noqa: E402

shown_steps = (1, 50, 100, 200, 300, 500, 700, 1000)
digit = backend.to_host(to_unit_range(load_mnist("test")[0][:1]))               # (1, 1, 28, 28)
digits = backend.to_device(np.repeat(digit, len(shown_steps), axis=0))
noise = backend.to_device(np.repeat(backend.to_host(backend.randn(*digit.shape)),
                                    len(shown_steps), axis=0))
index = backend.to_device(np.array([k - 1 for k in shown_steps]))
rows = {label: backend.to_host(q_sample(sched, digits, index, noise))
        for label, sched in (("linear", schedule), ("cosine", NoiseSchedule.cosine(1000)))}
if plt is not None:
    fig, axes = plt.subplots(2, len(shown_steps), figsize=(13, 3.8))
    for row, (label, images) in enumerate(rows.items()):
        for col, step in enumerate(shown_steps):
            axes[row, col].imshow(images[col, 0], cmap="gray", vmin=-1.5, vmax=1.5)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            axes[row, col].set_title(f"{label}, t = {step}", fontsize=8)
    fig.tight_layout()
    figure = out_dir / "01_digit.png"
    fig.savefig(figure, dpi=100)
    plt.close(fig)
    show("figure", figure)

print("lesson 01: all checks passed")
