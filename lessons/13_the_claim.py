# %% [markdown]
# # Lesson 13 — The claim: the bound gives better codelengths, L_simple better samples
#
# The article ends (section 15, after Ho et al. 2020) with: "training on the true variational
# bound yields better codelengths than training on the simplified objective, as expected, but
# the latter yields the best sample quality."  Improved DDPM (Nichol & Dhariwal 2021) then
# learned the reverse variances and got both.  This lesson derives why, measures each step of
# the argument on small models, and ends with the table `minidiff claim` measured on the three
# shipped models.
#
# Sections:
#
# 1. $L_\text{simple}$ is the bound with a weight dropped, eq. (13.5), checked term by term
# 2. Why dropping it helps samples: where the bound's mass lies in $t$
# 3. Why the bound is hard to optimise: gradients across $t$; importance sampling, (13.3), (13.4)
# 4. What learned variances buy, eq. (13.1), $L_\text{hybrid}$ (13.6)
# 5. The measured table, and the samples
#
#     python lessons/13_the_claim.py [--quick] [--out DIR]
#
# The objectives themselves are trained by `minidiff train --preset claim --set
# objective=simple|vlb|hybrid` (docs/the-claim.md); $L_\text{vlb}$ at one drawn $t$ is the
# estimate
#
# $$ L_\text{vlb} \approx L_T + T\,L_t, \qquad t \sim \mathrm{Uniform}\{0, \dots, T-1\} \tag{13.2} $$
#
# of the whole bound (4.2), in bits per dim.

# %%
import json
import math

from _lesson import host, lesson_parser, pyplot, show, start  # finds minidiff; --quick, --out
from minidiff import backend
from minidiff.data.mnist import from_unit_range, load_mnist, to_unit_range
from minidiff.diffusion import (OBJECTIVES, NoiseSchedule, p_mean_variance, q_sample, training_step,
                                vlb_term_at)
from minidiff.diffusion.resample import (LossSecondMomentSampler, estimator_variance,
                                         second_moment_probabilities)
from minidiff.data.spaces import PixelSpace
from minidiff.pipelines.sample import sample_images
from minidiff.evaluate.likelihood import bound_split
from minidiff.data.images import save_grid
from minidiff.models.unet import UNet
from minidiff.data.paths import DataNotFoundError, find
from minidiff.tensor import Tensor, no_grad

np = backend.host

args, out_dir = start(lesson_parser("Lesson 13: the claim", "tiny untrained stand-ins "
                                    "instead of the shipped models (what the tests run)"),
                      dtype="float64")
N_IMAGES = 2 if args.quick else 16          # test images for the per-t terms
SAMPLE_STEPS = 3 if args.quick else 50
STAND_IN_T = 200 if args.quick else 1000    # the stand-ins' steps (the claim preset: 1000)


def shipped(objective):
    """(eps_model, schedule, config) of data/checkpoints/claim_<objective>.npz, or None (in
    --quick, or before the models are shipped)."""
    if args.quick:
        return None
    from minidiff.pipelines.load import load_pipeline  # noqa: PLC0415
    try:
        pipeline = load_pipeline(find(f"checkpoints/claim_{objective}.npz"))
        return pipeline.eps(), pipeline.schedule, pipeline.config
    except DataNotFoundError:
        return None


def stand_in(objective):
    """An untrained tiny U-Net (two outputs for hybrid) and a linear schedule of STAND_IN_T."""
    learned = objective == "hybrid"
    model = UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(), image_size=28, groups=4,
                 out_channels=2 if learned else 1).eval()
    config = {"objective": objective, "variance": "learned" if learned else "fixed_small"}
    return model, NoiseSchedule.linear(STAND_IN_T), config


MODELS = {}
for objective in OBJECTIVES:
    found = shipped(objective)
    MODELS[objective] = found if found is not None else stand_in(objective)
    print(f"claim_{objective}: " + ("the shipped model" if found is not None else
                                     "an untrained stand-in (tiny U-Net)"))
x0 = to_unit_range(load_mnist("test")[0][:N_IMAGES])


# %% [markdown]
# ## 1. $L_\text{simple}$ is a reweighted bound
#
# With the reverse variance fixed to the posterior's, $\sigma_t^2 = \tilde\beta_t$
# (fixed_small), both Gaussians of a KL term $L_{t-1}$ share their variance, so (4.3) keeps
# only the distance of the means:
# $L_{t-1} = \mathbb E\,\lVert\tilde\mu_t - \mu_\theta\rVert^2 / (2\sigma_t^2)$ (per
# dimension, as everywhere in minidiff).  Both means are written with the noise (4.5):
#
# $$
# \tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon\Big),
# \qquad
# \mu_\theta = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon_\theta\Big),
# $$
#
# so their difference is $\frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1-\bar\alpha_t}}
# (\epsilon_\theta - \epsilon)$ and
#
# $$
# L_{t-1} = \lambda_t\,\lVert\epsilon - \epsilon_\theta(x_t, t)\rVert^2, \qquad
# \lambda_t = \frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)}. \tag{13.5}
# $$
#
# $L_\text{simple}$ is this sum with every $\lambda_t$ set to 1: a reweighted bound.  The
# decoder $L_0$ has no such form: it is the discretized likelihood of $x_0$ (4.7), not a KL,
# and its width cannot be $\tilde\beta_1$, which is 0 ($\bar\alpha_0 = 1$); the library,
# like improved-diffusion, gives it the variance $\tilde\beta_2$
# (`posterior_log_variance_clipped[0]`).  We check (13.5) on a random model: the KL term
# computed by the library's `bound_term` (through `vlb_term_at`) against $\lambda_t$ times the
# squared noise error, with the same noise.

# %%
model, schedule, config = stand_in("simple")


def weights(schedule):
    """lambda_t of (13.5) for t >= 1 (index 0, the decoder, has none: inf)."""
    betas, post_var = host(schedule.betas), host(schedule.posterior_variance)
    alphas, abar = 1.0 - betas, host(schedule.alphas_cumprod)
    lam = np.full(len(betas), np.inf)
    lam[1:] = betas[1:] ** 2 / (2 * post_var[1:] * alphas[1:] * (1 - abar[1:]))
    return lam


def check_lambda(schedule, model, x0, check_t):
    """(13.5): the library's KL term (vlb_term_at) == weights(schedule)[t] times the squared
    noise error of the same model with the same noise, at the indices ``check_t``."""
    lam = weights(schedule)
    n = len(x0)
    noise = backend.randn(len(check_t) * n, *x0.shape[1:])
    t = backend.to_device(np.repeat(np.array(check_t, dtype=np.int64), n))
    x_rep = backend.xp().concatenate([x0] * len(check_t))
    kl = host(vlb_term_at(schedule, model, x_rep, t, noise=noise))
    with no_grad():
        eps_theta = model(Tensor(q_sample(schedule, x_rep, t, noise)), t).data
    mse = host(((noise - eps_theta) ** 2).reshape(len(x_rep), -1).mean(axis=1))
    np.testing.assert_allclose(kl, lam[host(t)] * mse, rtol=1e-8)


T, lam = schedule.num_timesteps, weights(schedule)
check_t = [1, 2, 10, T // 10, T // 2, T - 1]
check_lambda(schedule, model, x0, check_t)
print("(13.5) KL term == lambda_t ||eps - eps_theta||^2 per dim, at t =", check_t)
for k in (1, 10, T // 10, T - 1):
    show(f"lambda_t at index t = {k}", f"{lam[k]:.4g}")

plt = pyplot()
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(np.arange(1, T), lam[1:])
    ax.set_xlabel("t (0-based index)")
    ax.set_ylabel("lambda_t")
    ax.set_title("(13.5): the weight L_simple drops")
    fig.tight_layout()
    fig.savefig(out_dir / "13_weight.png", dpi=100)
    plt.close(fig)
    print(f"saved {out_dir / '13_weight.png'}")

# %% [markdown]
# ## 2. Why dropping it helps the samples
#
# $\lambda_t$ is largest at small $t$ (the first steps barely change the image, yet the
# bound charges every bit of their detail), so the bound's terms are concentrated there: the
# codelength is mostly about imperceptible detail.  $L_\text{simple}$ weighs every $t$ alike,
# so its training attends to the larger $t$ where the digit's shape is decided, which is what a
# sample needs.  We measure the per-$t$ terms of the bound (every $t$, `bound_split`) on a
# model, and the per-$t$ noise error of $L_\text{simple}$ (the KL term divided by
# $\lambda_t$; at $t = 0$ directly), and compare the share of each that falls in the first 1%
# and 10% of $t$.
#
# That the bound's share is the larger is no measurement: dividing by $\lambda_t$, which
# falls steeply over the first steps, guarantees it.  What is measured, and can fail, is that
# the noise errors derived from `bound_split` through (13.5) are the noise errors: at a few
# $t$ we evaluate $\lVert\epsilon - \epsilon_\theta\rVert^2$ directly with fresh noise and
# compare (a wrong $\lambda_t$, or a bound term without it, would be off by far more than the
# Monte Carlo error).

# %%
model, schedule, config = MODELS["simple"]
T, lam = schedule.num_timesteps, weights(schedule)
backend.manual_seed(0)
split = bound_split(schedule, model, x0, variance=config.get("variance", "fixed_small"))
terms = split["terms"]                                       # (N, T), bits per dim
per_t_bound = terms.mean(axis=0)
per_t_simple = np.empty(T)
per_t_simple[1:] = per_t_bound[1:] * math.log(2.0) / lam[1:]
t0 = backend.to_device(np.zeros(N_IMAGES, dtype=np.int64))
noise = backend.randn(*x0.shape)
with no_grad():
    eps0 = model(Tensor(q_sample(schedule, x0, t0, noise)), t0).data[:, :1]
per_t_simple[0] = float(host(((noise - eps0) ** 2).mean()))


def share(values, fraction):
    return float(values[:max(int(fraction * len(values)), 1)].sum() / values.sum())


for fraction in (0.01, 0.1):
    show(f"share in the first {fraction:.0%} of t: bound", f"{share(per_t_bound, fraction):.1%}")
    show(f"share in the first {fraction:.0%} of t: L_simple",
         f"{share(per_t_simple, fraction):.1%}")
show("share in the first 10% of t of lambda_t alone", f"{share(lam[1:], 0.1):.1%}")


def check_noise_errors(per_t_simple, model, schedule, x0, ts, draws=4):
    """per_t_simple (from the bound through (13.5)) against ||eps - eps_theta||^2 measured
    directly with fresh noise at ``ts``, within 6 standard errors of the two estimates."""
    for step in ts:
        t_vec = backend.to_device(np.full(len(x0), step, dtype=np.int64))
        errors = []
        for _ in range(draws):
            eps = backend.randn(*x0.shape)
            with no_grad():
                out = model(Tensor(q_sample(schedule, x0, t_vec, eps)), t_vec).data[:, :1]
            errors.append(host(((eps - out) ** 2).reshape(len(x0), -1).mean(axis=1)))
        errors = np.concatenate(errors)
        se = errors.std() / math.sqrt(len(errors)) * math.sqrt(1 + draws)  # both estimates
        assert abs(errors.mean() - per_t_simple[step]) < 6 * se + 1e-3 * errors.mean(), \
            (step, errors.mean(), per_t_simple[step], se)
        yield step, float(errors.mean()), float(per_t_simple[step])


for step, direct, derived in check_noise_errors(per_t_simple, model, schedule, x0,
                                                sorted({1, T // 10, T // 2, T - 1})):
    show(f"(13.5) t = {step}: ||eps - eps_theta||^2 direct / from the bound",
         f"{direct:.4f} / {derived:.4f}")
show("bits/dim (full bound, L_T + L_0 + rate)",
     f"{split['bpd']:.3f} = {split['prior'].mean():.4f} + {split['distortion'].mean():.3f}"
     f" + {split['rate'].mean():.3f}")
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(per_t_bound / per_t_bound.sum(), label="bound: L_t / L")
    ax.semilogy(per_t_simple / per_t_simple.sum(), label="L_simple: ||eps - eps_theta||^2 / sum")
    ax.set_xlabel("t (0-based index)")
    ax.set_ylabel("share of the objective")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "13_per_t.png", dpi=100)
    plt.close(fig)
    print(f"saved {out_dir / '13_per_t.png'}")

# %% [markdown]
# ## 3. Why the bound is hard to optimise
#
# Trained by (13.2), the bound's gradient at one drawn $t$ is $T$ times that term's gradient.
# Because the terms differ by orders of magnitude across t, so do their gradients: a batch that
# draws a small t (or the decoder) gets a huge step, most batches a tiny one.  We measure the
# gradient norm of L_vlb (13.2) and of L_simple at fixed t on the same batch and noise.

# %%
model, schedule, config = MODELS["vlb"]
T = schedule.num_timesteps
grad_t = sorted({0, 1, 2, 5, 10, T // 30, T // 10, T // 3, T - 1})
noise = backend.randn(*x0.shape)
norms = {"vlb": [], "simple": []}
for objective in norms:
    for step in grad_t:
        model.zero_grad()
        loss = training_step(model, schedule, x0, objective=objective, noise=noise,
                             variance=config.get("variance", "fixed_small"),
                             t=backend.to_device(np.full(N_IMAGES, step, dtype=np.int64)))
        loss.backward()
        norms[objective].append(math.sqrt(sum(float((p.grad ** 2).sum())
                                              for p in model.parameters()
                                              if p.grad is not None)))
model.zero_grad()
print(f"{'t':>6s} {'|grad L_vlb|':>14s} {'|grad L_simple|':>16s}")
for step, g_vlb, g_simple in zip(grad_t, norms["vlb"], norms["simple"]):
    print(f"{step:6d} {g_vlb:14.4g} {g_simple:16.4g}")
spread = {k: max(v) / min(v) for k, v in norms.items()}
show("gradient norm, max / min over t: L_vlb", f"{spread['vlb']:.3g}")
show("gradient norm, max / min over t: L_simple", f"{spread['simple']:.3g}")
# (the larger spread of L_vlb is lambda_t's range (13.5) at work, not an independent finding:
# this assert guards the wiring of the objectives, the printed norms are the lesson)
assert spread["vlb"] > spread["simple"], spread
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.loglog([max(t, 0.5) for t in grad_t], norms["vlb"], "o-", label="L_vlb (13.2)")
    ax.loglog([max(t, 0.5) for t in grad_t], norms["simple"], "s-", label="L_simple")
    ax.set(xlabel="t (0-based index; 0 drawn at 0.5)", ylabel="gradient norm",
           title="one batch, one t: the bound's gradients span decades")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "13_gradients.png", dpi=100)
    plt.close(fig)
    print(f"saved {out_dir / '13_gradients.png'}")

# %% [markdown]
# The remedy (improved DDPM, Nichol & Dhariwal 2021, section 3.3): draw $t$ with
# probabilities $p_t$ and weigh the drawn term by $1/(T p_t)$, which keeps the estimate
# unbiased,
#
# $$ \mathbb E_{t \sim p}\Big[\frac{T\,L_t}{T\,p_t}\Big] = \sum_t L_t, \tag{13.3} $$
#
# and choose $p_t \propto \sqrt{\mathbb E[L_t^2]}$, the $p$ that minimises the variance of
# the one-draw estimate $L_t / p_t$,
#
# $$ \mathrm{Var} = \mathbb E_x\Big[\sum_t \frac{L_t(x)^2}{p_t}\Big] - \big(\mathbb E_x L(x)\big)^2.
#    \tag{13.4} $$
#
# (Minimise $\sum_t m_t / p_t$, $m_t = \mathbb E[L_t^2]$, under $\sum_t p_t = 1$: by
# Cauchy-Schwarz $(\sum_t \sqrt{m_t})^2 = (\sum_t \sqrt{m_t/p_t}\sqrt{p_t})^2
# \le \sum_t m_t/p_t$, with equality when $p_t \propto \sqrt{m_t}$.)  Since that $p$ is the
# minimiser over the images it is fitted on, comparing the two variances on the same images
# would prove nothing: we fit $p$ on half of the test images and measure both variances on
# the other half.  `minidiff claim` reports the same for each shipped model.

# %%
fit, held = terms[:max(1, N_IMAGES // 2)], terms[max(1, N_IMAGES // 2):]
p = second_moment_probabilities(fit)
uniform = estimator_variance(held)
weighted = estimator_variance(held, p)
show("(13.4) held-out variance, t uniform (bits/dim)^2", f"{uniform:.4g}")
show("(13.4) held-out variance, t ~ sqrt(E L_t^2) (bits/dim)^2", f"{weighted:.4g}")
show("reduction", f"{uniform / weighted:.3g}x")
assert weighted < uniform, (weighted, uniform)
p = second_moment_probabilities(terms)          # for the unbiasedness check, all images
weighted = estimator_variance(terms, p)
draws = np.random.default_rng(0).choice(T, size=(2000, N_IMAGES), p=p)
estimates = terms[np.arange(N_IMAGES), draws] / p[draws]            # (13.3), one draw each
assert abs(estimates.mean() - terms.sum(axis=1).mean()) < 5 * math.sqrt(weighted / draws.size)
print("(13.3) the weighted draws average to the full sum (within 5 standard errors)")

# %% [markdown]
# During training the $p_t$ of (13.3) come from `LossSecondMomentSampler`: it keeps each
# $t$'s last 10 losses, draws $t$ uniformly until every $t$ has 10, then uses
# $p_t = (1 - u)\,\sqrt{\overline{L_t^2}} / \sum_s \sqrt{\overline{L_s^2}} + u / T$ with a
# small uniform share $u = 0.001$ (so no $t$ is starved), and weighs each drawn term by
# $1/(T p_t)$.  A check on losses we choose: at each $t$ fifteen losses, the first five huge
# (a sampler that kept them, or kept all, would give other $p$), the last ten of known
# second moment; the draws' frequencies against $p$, each within 5 standard errors.

# %%


def check_loss_sampler(T_small=20, history=10, draws=200_000, seed=0):
    """LossSecondMomentSampler: uniform before warm-up; after, p from the last ``history``
    losses of each t only, by hand; weights 1 / (T p); frequencies of its draws ~ p."""
    sampler = LossSecondMomentSampler(T_small, history=history)
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.5, 3.0, T_small)
    recent = []
    for k in range(15):                                  # 15 losses per t, in batches of T
        t_batch = rng.permutation(T_small)
        losses = 1e6 * np.ones(T_small) if k < 5 else scale[t_batch] * rng.uniform(0.5, 1.5,
                                                                                     T_small)
        if k == 5:
            assert not sampler.warmed_up()
            np.testing.assert_allclose(sampler.probabilities(), 1.0 / T_small)
        sampler.update(t_batch, losses)
        if k >= 5:
            recent.append(np.empty(T_small))
            recent[-1][t_batch] = losses
    recent = np.array(recent)                            # (10, T): the last ten at each t
    root = np.sqrt((recent ** 2).mean(axis=0))
    want = (1 - 0.001) * root / root.sum() + 0.001 / T_small
    assert sampler.warmed_up()
    np.testing.assert_allclose(sampler.probabilities(), want, rtol=1e-12)
    backend.manual_seed(seed)
    t, w = (host(a) for a in sampler.draw(draws))
    np.testing.assert_allclose(w, 1.0 / (T_small * want[t]), rtol=1e-12)
    freq = np.bincount(t, minlength=T_small) / draws
    assert np.all(np.abs(freq - want) < 5 * np.sqrt(want * (1 - want) / draws)), freq - want
    return want


sampler_p = check_loss_sampler()
print(f"(13.3) LossSecondMomentSampler: uniform before warm-up, then p from each t's last 10 "
      f"losses only (by hand), weights 1/(T p), draws' frequencies == p within 5 standard "
      f"errors; p from {sampler_p.min():.3f} to {sampler_p.max():.3f} over T = 20")

# %% [markdown]
# ## 4. What learned variances buy
#
# Ho et al. fixed $\sigma_t^2$ to $\beta_t$ or $\tilde\beta_t$ and found sample quality the
# same.  Their section 3.2 says what the two are: $\beta_t$ is the optimal reverse variance
# for $x_0 \sim \mathcal N(0, I)$, $\tilde\beta_t$ for $x_0$ a single point, the two
# extremes of the reverse process's entropy for data of unit variance per coordinate (not
# bounds on the reverse variance of every data set).  The two are nearly equal except near
# $t = 0$: $\tilde\beta_t / \beta_t = (1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$ is 0 at
# $t = 1$, about 0.46 at $t = 2$, 0.85 at $t = 10$ and 0.96 at $t = 50$ for the linear schedule
# (figure below, as Nichol & Dhariwal's Fig. 1).  But the first steps are where the bound's
# mass is (section 2), so for the codelength the choice matters.  Improved DDPM learns an
# interpolation in the log domain from a second output $\nu$ of the network (Nichol &
# Dhariwal's $v$, not the velocity $v$ of (2.6)),
#
# $$ \log \Sigma_t = f \log \beta_t + (1 - f) \log \tilde\beta_t, \qquad f = (\nu + 1)/2, \tag{13.1} $$
#
# trained by $L_\text{hybrid} = L_\text{simple} + 0.001\,L_\text{vlb}$ with the mean detached
# inside $L_\text{vlb}$ (13.6): $L_\text{simple}$ keeps training the mean for samples, the
# bound trains only the variance.  First the ratio, from the schedule's `posterior_variance`
# against a closed form of our own at $t = 2$: $\tilde\beta_2/\beta_2 = \beta_1 / (\beta_1 +
# \beta_2 - \beta_1\beta_2)$.  Then the learned $f$ across $t$ (averaged over pixels and
# images) and the bits/dim of the same model with its learned variance and with fixed_small
# (its first output channel only).

# %%
ratio_schedule = NoiseSchedule.linear(1000)
beta_ratio = host(ratio_schedule.posterior_variance) / host(ratio_schedule.betas)
b1, b2 = (float(b) for b in host(ratio_schedule.betas)[:2])
np.testing.assert_allclose(beta_ratio[1], b1 / (b1 + b2 - b1 * b2), rtol=1e-12)
assert beta_ratio[0] == 0.0
for step in (1, 2, 10, 50, 1000):
    show(f"beta~_t / beta_t at t = {step} (linear, T = 1000)", f"{beta_ratio[step - 1]:.3f}")
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in ("linear", "cosine"):
        sched = getattr(NoiseSchedule, name)(1000)
        ax.plot(np.arange(1, 1001), host(sched.posterior_variance) / host(sched.betas),
                label=name)
    ax.set(xscale="log", xlabel="t", ylabel="beta~_t / beta_t",
           title="the two fixed variances differ only near t = 0")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "13_beta_ratio.png", dpi=100)
    plt.close(fig)
    print(f"saved {out_dir / '13_beta_ratio.png'}")

# %%
model, schedule, config = MODELS["hybrid"]
T, betas = schedule.num_timesteps, host(schedule.betas)
frac_t = sorted({1, 10, T // 20, T // 10, T // 3, 3 * T // 5, T - 1})
fracs = []
for step in frac_t:
    t = backend.to_device(np.full(N_IMAGES, step, dtype=np.int64))
    with no_grad():
        x_t = q_sample(schedule, x0, t, backend.randn(*x0.shape))
        out = model(Tensor(x_t), t).data
    frac = (out[:, 1:] + 1.0) / 2.0
    log_var = host(p_mean_variance(schedule, out, x_t, t, variance="learned")["log_variance"])
    by_hand = host(frac) * np.log(betas[step]) + (1 - host(frac)) * \
        host(schedule.posterior_log_variance_clipped)[step]
    np.testing.assert_allclose(log_var, by_hand, rtol=1e-10, atol=1e-12)
    fracs.append(float(host(frac).mean()))
print("(13.1) log Sigma from p_mean_variance == f log beta + (1 - f) log beta~, f = (nu + 1) / 2")


def check_hybrid_stop_gradient(schedule, x0, step, vlb_weight=0.001):
    """(13.6): with the network's output as the only parameter, L_hybrid's gradient on the
    mean channel is L_simple's, and on the variance channel vlb_weight times L_vlb's; returns
    the size of the bound's gradient on the mean, which the stop-gradient removes."""
    from minidiff.nn.module import Parameter  # noqa: PLC0415
    rng = np.random.default_rng(3)
    out = Parameter(backend.to_device(0.5 * rng.standard_normal((len(x0), 2) + x0.shape[2:])))
    t = backend.to_device(np.full(len(x0), step, dtype=np.int64))
    noise = backend.randn(*x0.shape)
    grads = {}
    for objective in ("simple", "vlb", "hybrid"):
        out.grad = None
        training_step(lambda x, tt: out * 1.0, schedule, x0, objective=objective,
                      variance="learned", t=t, noise=noise, vlb_weight=vlb_weight).backward()
        grads[objective] = host(out.grad)
    np.testing.assert_allclose(grads["hybrid"][:, :1], grads["simple"][:, :1], rtol=1e-9,
                               atol=1e-15)
    np.testing.assert_allclose(grads["hybrid"][:, 1:], vlb_weight * grads["vlb"][:, 1:],
                               rtol=1e-9, atol=1e-15)
    return float(np.abs(grads["vlb"][:, :1]).max())


mean_gradient = check_hybrid_stop_gradient(schedule, x0, T // 10)
print(f"(13.6) L_hybrid's gradient: mean channel == L_simple's, variance channel == 0.001 x "
      f"L_vlb's (the bound's own gradient on the mean, up to {mean_gradient:.2e}, is stopped)")
assert mean_gradient > 0
print(f"{'t':>6s} {'learned frac':>13s}   (fixed_small: 0, fixed_large: 1)")
for step, f in zip(frac_t, fracs):
    print(f"{step:6d} {f:13.3f}")

bpd = {}
for variance in ("learned", "fixed_small"):
    backend.manual_seed(1)
    eps_model = model if variance == "learned" else (lambda x, t: model(x, t)[:, :1])
    bpd[variance] = bound_split(schedule, eps_model, x0, variance=variance)["bpd"]
    show(f"bits/dim of the hybrid model, {variance}", f"{bpd[variance]:.3f}")
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(frac_t, fracs, "o-", label="learned frac (hybrid)")
    ax.axhline(0.0, color="gray", ls="--", label="fixed_small (beta~)")
    ax.axhline(1.0, color="gray", ls=":", label="fixed_large (beta)")
    ax.set_xlabel("t (0-based index)")
    ax.set_ylabel("frac")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "13_learned_frac.png", dpi=100)
    plt.close(fig)
    print(f"saved {out_dir / '13_learned_frac.png'}")

# %% [markdown]
# ## 5. The measured table
#
# `minidiff claim` evaluates the three shipped models (docs/the-claim.md); its `--json`
# output, stored as data/checkpoints/claim_table.json, is shown here.  Columns: the full bound
# in bits/dim (every $t$, $\pm$ one standard error over the test images), the Monte-Carlo
# estimate beside it, the bound split as the DDPM paper's Table 4 (prior $L_T$, distortion
# $L_0$, rate $\sum L_{t-1}$), FID on minidiff's MNIST classifier and its mean confidence.

# %%
from minidiff.evaluate.claim import markdown_table

try:
    table = json.loads(open(find("checkpoints/claim_table.json"), encoding="utf-8").read())
except DataNotFoundError:
    table = None
if table is None:
    print("the table: not measured yet (data/checkpoints/claim_table.json is absent; "
          "minidiff claim --json writes it)")
else:
    print(markdown_table(table))
    for row in table["models"]:
        values = np.array(row["per_t_bits"])
        show(f"{row['name']}: bound share in the first 10% of t", f"{share(values, 0.1):.1%}")

# %% [markdown]
# And samples of the three, DDPM ancestral sampling respaced to 50 steps, each with its own
# variance, from the same seed (one row each).

# %%
rows, labels = [], []
for objective in OBJECTIVES:
    model, schedule, config = MODELS[objective]
    images, _ = sample_images(model, schedule, PixelSpace(), 8, "ddpm",
                              min(SAMPLE_STEPS, schedule.num_timesteps), seed=0,
                              variance=config["variance"])
    rows.append(images)
    labels.append(objective)
grid = backend.xp().concatenate(rows)
assert grid.shape == (8 * len(OBJECTIVES), 1, 28, 28) and bool(backend.xp().isfinite(grid).all())
save_grid(from_unit_range(grid), out_dir / "13_samples.png", nrow=8, labels=labels)
print(f"saved {out_dir / '13_samples.png'}")

print("lesson 13: all checks passed")
