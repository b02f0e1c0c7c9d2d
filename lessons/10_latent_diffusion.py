# %% [markdown]
# # Lesson 10 — Latent diffusion: the same diffusion, on an autoencoder's latents
#
# Lesson 08 ended on the speed problem: every sampling step is one U-Net pass over all 784
# pixels.  Rombach et al. (2022) move the whole diffusion process into the latent space of an
# autoencoder (lesson 09): the encoder $E$ squeezes a $1\times28\times28$ digit into $c\times7\times7$ numbers, the
# diffusion model learns and samples *those*, and the decoder $D$ turns the final latent back
# into an image, once:
#
# $$
# \begin{aligned}
# &\text{training:} && z_0 = s\,E(x), \text{ then Algorithm 1 on } z_0 \text{ exactly as on } x_0\\
# &\text{sampling:} && z_T \sim \mathcal N(0, I) \to \dots \to z_0 \text{ by Algorithm 2 / DDIM,
#    then } x = D(z_0 / s)
# \end{aligned} \tag{10.1}
# $$
#
# Nothing in the diffusion code changes: ``q_sample``, the losses and the samplers take
# arrays of any shape.  What changes is *what $x_0$ is*, and that choice lives in one place,
# `minidiff/data/spaces.py` (a `PixelSpace` or a `LatentSpace`).
#
# Sections:
#
# 1. The autoencoder's latents and the scale factor s
# 2. Why unit variance: the schedule's signal-to-noise ratio (10.2)
# 3. The same q_sample on z (10.3), and one training step of a 7x7 U-Net
# 4. Encode once: the training set as posterior means and standard deviations
# 5. Sampling an LDM: z_T -> z_0 -> D(z_0 / s)
# 6. Sampling is cheaper: the cost per image, measured (10.4)
#
#     python lessons/10_latent_diffusion.py            # the full lesson (shipped models)
#     python lessons/10_latent_diffusion.py --quick    # tiny stand-ins, seconds (the tests)
#     python lessons/10_latent_diffusion.py --out DIR  # where the figures go

# %%
import math
import pathlib
import statistics
import time

from _lesson import host, lesson_parser, pyplot, start  # finds minidiff; --quick, --out
import minidiff as md
from minidiff import backend
from minidiff.data.mnist import from_unit_range, load_mnist, to_unit_range
from minidiff.diffusion import NoiseSchedule, ddim_sample, q_sample, training_step
from minidiff.models import UNet
from minidiff.models.autoencoder import AutoencoderKL
from minidiff.data.spaces import LatentSpace
from minidiff.tensor import Tensor, no_grad

np = backend.host  # NumPy, for host-side numbers in this lesson

parser = lesson_parser("Lesson 10: latent diffusion",
                       "tiny stand-ins instead of the shipped models (seconds)")
parser.add_argument("--autoencoder", default="data/checkpoints/ae.npz")
parser.add_argument("--ldm", default="data/checkpoints/ldm.npz")
parser.add_argument("--pixel", default="data/checkpoints/quick.npz")
args, out_dir = start(parser)
xp = backend.xp()
schedule = NoiseSchedule.linear(1000)
T = schedule.num_timesteps


shipped = not args.quick and all(pathlib.Path(p).exists()
                                  for p in (args.autoencoder, args.ldm, args.pixel))
if not args.quick and not shipped:
    print("a shipped model is missing: using the tiny stand-ins of --quick")

# %% [markdown]
# ## 1. The latents, and the scale factor
#
# The shipped autoencoder (`data/checkpoints/ae.npz`, lesson 09) maps a digit to a diagonal
# Gaussian $q(z \mid x) = \mathcal N(\mu(x), \sigma(x)^2)$ over $4\times7\times7$ numbers.  Its training (a
# reconstruction loss plus a small KL term) does not fix their scale: the latents come out
# with whatever spread the network found convenient.  Lesson 09 measured it over the training
# set and stored $s = 1/\mathrm{std}(z)$ in the checkpoint (CompVis' `scale_by_std`, (9.6); Stable
# Diffusion's 0.18215 is the same number for its autoencoder).  With `--quick` a tiny,
# untrained autoencoder stands in, and $s$ is measured here in the same way.  It is checked on
# test images it was not measured on.

# %%
train_images, _ = load_mnist("train")
n_images = 256 if args.quick else 2000
images = train_images[:n_images]
held_out = load_mnist("test")[0][:n_images]       # the scale is checked on images it never saw
if shipped:
    from minidiff.pipelines.load import load_autoencoder
    autoencoder, _, scale_factor = load_autoencoder(args.autoencoder)
else:
    autoencoder = AutoencoderKL(base_channels=8, latent_channels=4)
    scale_factor = None
autoencoder.eval()
with no_grad():
    posterior = autoencoder.encode(Tensor(to_unit_range(images)))
    z = host(posterior.sample())
if scale_factor is None:
    scale_factor = 1.0 / float(z.std())
print(f"latent shape {tuple(z.shape[1:])} ({z[0].size} numbers for 784 pixels); unscaled "
      f"latents: mean {z.mean():+.3f}, std {z.std():.3f}; scale factor s = {scale_factor:.4f}")
scaled = scale_factor * z
with no_grad():
    z_held = host(autoencoder.encode(Tensor(to_unit_range(held_out))).sample())
print(f"scaled latents s z: std {scaled.std():.3f} on the training images, "
      f"{(scale_factor * z_held).std():.3f} on {len(held_out)} test images")
assert abs(float((scale_factor * z_held).std()) - 1.0) < 0.15, "s z has about unit variance"

# %% [markdown]
# ## 2. Why unit variance (10.2)
#
# The forward process $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$
# (2.4) was designed for data of order 1: Ho et al.'s images in $[-1, 1]$ (MNIST's pixels
# there have std ~0.6, not 1).  For data of variance $v$, the signal-to-noise ratio at step
# $t$ is
#
# $$ \mathrm{SNR}_v(t) = \frac{\bar\alpha_t\, v}{1 - \bar\alpha_t}, \tag{10.2} $$
#
# so multiplying the data by a factor multiplies the SNR by its square at *every* $t$: the
# schedule's halfway point ($\mathrm{SNR} = 1$, where $\bar\alpha_t = 1/(1+v)$) slides
# towards $t = T$ for $v > 1$ ($x_T$ is no longer noise when $v$ is large enough) and towards
# $t = 0$ for $v < 1$ (most steps see only noise, and the network learns little from them).
# $s$ brings $v$ to 1: of the order of the pixel data the schedules were made for, and the
# convention Rombach et al. chose; nothing singles out exactly 1.
#
# The check: at the step where (10.2) says $\mathrm{SNR} = 1$, half of $z_t$'s variance is
# signal, so the squared correlation of $z_t$ with $z_0$, measured on noised latents, is
# $\mathrm{SNR}/(1 + \mathrm{SNR}) = 1/2$, for data of every variance.  A wrong (10.2)
# ($\sqrt v$ for $v$, say) would put the halfway step where the correlation is not 1/2.

# %%
abar = host(schedule.alphas_cumprod).astype(np.float64)


def halfway(v):
    """The first (1-based) t at which SNR_v(t) = abar_t v / (1 - abar_t) falls below 1."""
    return int(np.argmax(abar * v / (1.0 - abar) < 1.0)) + 1


for label, v in (("scaled, s z", float(scaled.var())), ("unscaled, z", float(z.var())),
                 ("z x 5", 25.0), ("z / 5", 1.0 / 25.0)):
    print(f"(10.2) {label:12s} variance {v:8.3f}: SNR = 1 at t = {halfway(v):4d}; "
          f"SNR at t = T: {abar[-1] * v / (1 - abar[-1]):.1e}")
z_flat = backend.to_device(scaled.astype(np.float64))
for factor in (5.0, 1.0, 0.2):
    data_v = factor * z_flat
    v = float(backend.to_host(data_v).var())
    index = halfway(v) - 1
    noised = q_sample(schedule, data_v, xp.full((len(scaled),), index),
                      backend.randn(*scaled.shape, dtype="float64"))
    r2 = float(np.corrcoef(host(data_v).ravel(), host(noised).ravel())[0, 1] ** 2)
    print(f"(10.2) data x {factor:g} (variance {v:.3f}): at t = {index + 1} corr(z_t, z_0)^2 = "
          f"{r2:.3f} (1/2 where SNR = 1)")
    assert abs(r2 - 0.5) < 0.03, (factor, r2)

# %% [markdown]
# ## 3. The same q_sample on z (10.3)
#
# The forward process does not know what it is noising: `q_sample(schedule, z0, t, eps)` is
# (2.4) elementwise.  Two checks.  By hand, $\sqrt{\bar\alpha_t}\,z_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ gives
# the same array.  By Monte Carlo, its variance follows the closed form
#
# $$ \mathrm{Var}(z_t) = \bar\alpha_t\,\mathrm{Var}(z_0) + (1 - \bar\alpha_t), \tag{10.3} $$
#
# which is 1 at every $t$ exactly when $\mathrm{Var}(z_0) = 1$: the scaled latents keep unit variance all
# the way from data to noise (latents five times too large start at variance 25 instead).
# Then one step of Algorithm 1 on $z_0$ with a U-Net whose input is $c\times7\times7$:
# `training_step` is the very function that trains the pixel model.

# %%
z0 = backend.to_device(scaled.astype(np.float32))
n = z0.shape[0]
t = backend.randint(0, T, (n,))
eps = backend.randn(*z0.shape, dtype=z0.dtype)
zt = q_sample(schedule, z0, t, eps)
a = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
by_hand = xp.sqrt(a) * z0 + xp.sqrt(1.0 - a) * eps
assert float(xp.abs(zt - by_hand).max()) < 1e-5
print("(10.3) q_sample on latents == sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps (by hand)")
for factor, label in ((1.0, "s z "), (5.0, "5 s z")):
    for index in (0, 250, 500, 999):
        noisy = host(q_sample(schedule, factor * z0, xp.full((n,), index),
                              backend.randn(*z0.shape, dtype=z0.dtype)))
        closed = abar[index] * factor ** 2 * float(scaled.var()) + 1.0 - abar[index]
        print(f"(10.3) z_0 = {label}, t = {index + 1:4d}: Var(z_t) = {noisy.var():6.3f}, "
              f"closed form {closed:6.3f}")
        assert abs(noisy.var() - closed) < 0.1 * closed

c, h, w = autoencoder.latent_shape
latent_unet = UNet(in_channels=c, out_channels=c, image_size=h, base_channels=8 if args.quick
                   else 32, channel_mults=(1,), num_res_blocks=2, attention_resolutions=())
# as ldm-quick trains it, predicting z_0; latents have no [-1, 1] range to check
loss = training_step(latent_unet, schedule, z0[:32], target_type="x0", x0_range=None)
loss.backward()
print(f"one training step on z_0 (U-Net in {c}x{h}x{w}): loss {loss.item():.3f}, every "
      f"parameter has a gradient: {all(p.grad is not None for p in latent_unet.parameters())}")
assert math.isfinite(loss.item())

# %% [markdown]
# ## 4. Encode once
#
# A training step of the LDM should cost only its small U-Net, so the encoder must not run
# at every step.  `LatentSpace.use(images)` encodes the training set once and keeps each
# image's posterior mean $\mu$ and standard deviation $\sigma$; `batch(index)` then draws
# $z_0 = s(\mu + \sigma\epsilon)$ from them (a fresh $\epsilon$ at every step, the
# reparameterization of (9.1)).  Two checks: without the draw, `batch` is exactly $s\mu$ from
# the encoder; with it, the draws of one image scatter around $s\mu$ with standard deviation
# $s\sigma$.

# %%
space = LatentSpace(autoencoder, scale_factor).use(images[:64], log=print)
index = np.arange(8)
with no_grad():
    direct = autoencoder.encode(Tensor(to_unit_range(images[:8])))
assert float(xp.abs(space.batch(index, draw=False)
                    - scale_factor * direct.mean.data).max()) < 1e-4
draws = host(xp.stack([space.batch(np.zeros(1, dtype=np.int64))[0] for _ in range(400)]))
spread = draws.std(axis=0) / (scale_factor * host(direct.std.data[0]))
centre = np.abs(draws.mean(axis=0) - scale_factor * host(direct.mean.data[0])) / \
    (scale_factor * host(direct.std.data[0]))
print(f"encode once: batch(draw=False) == s mu; 400 draws of one image: std / (s sigma) in "
      f"[{spread.min():.2f}, {spread.max():.2f}], |mean - s mu| / (s sigma) <= {centre.max():.2f}")
assert 0.8 < spread.min() and spread.max() < 1.2 and centre.max() < 0.35

# %% [markdown]
# ## 5. Sampling an LDM
#
# DDIM runs on $c\times7\times7$ arrays from $z_T \sim \mathcal N(0, I)$; the decoder runs once, at the end.  One
# difference from pixel space: the samplers clip their estimate of $x_0$ to $[-1, 1]$ in pixel
# space, where that is the data's range, but not in latent space (unit variance means values
# of +-3 are common): `space.clip_x0` says which.  With the shipped `ldm.npz` the digits are
# real; with `--quick` an untrained network gives decoded noise, which still shows the shapes.

# %%
if shipped:
    from minidiff.pipelines.load import load_pipeline
    ldm_pipeline = load_pipeline(args.ldm)       # the network, its schedule and its space
    ldm, ldm_schedule, ldm_space = ldm_pipeline.eps(), ldm_pipeline.schedule, ldm_pipeline.space
else:
    from minidiff.diffusion import as_eps_model  # noqa: E402
    ldm = as_eps_model(latent_unet.eval(), schedule, "x0")
    ldm_schedule, ldm_space = schedule, space
md.manual_seed(1)
k = 8 if args.quick else 32
z_sampled = ddim_sample(ldm, ldm_schedule, (k, *ldm_space.shape), steps=10 if args.quick else 50,
                        clip_x0=ldm_space.clip_x0)
digits = ldm_space.decode(z_sampled)
print(f"sampled z_0 {tuple(z_sampled.shape)} (std {float(z_sampled.std()):.2f}) -> decoded "
      f"images {tuple(digits.shape)} in [{float(digits.min()):.2f}, {float(digits.max()):.2f}]")
assert digits.shape == (k, 1, 28, 28)
from minidiff.data.images import save_grid
save_grid(from_unit_range(digits), out_dir / "10_ldm_samples.png", nrow=8)
print(f"samples written to {out_dir / '10_ldm_samples.png'}")

# %% [markdown]
# ## 6. Sampling is cheaper (10.4)
#
# Drawing one image with $S$ sampling steps costs
#
# $$ \text{pixel model: } S\,F_\text{pixel}, \qquad \text{latent model: } S\,F_\text{latent} + D, \tag{10.4} $$
#
# with $F$ the cost of one U-Net forward pass per image and $D$ that of one decoder pass.  The
# latent U-Net works on 49 positions instead of 784, so $F_\text{latent}$ is a fraction of
# $F_\text{pixel}$, and the decoder, run once, is shared by all $S$ steps.  The times are
# printed, not asserted (a busy machine can reorder them).  Measured below with $S = 50$ (DDIM), on the
# shipped models (or, with `--quick`, tiny U-Nets of 8 base channels).  On the 2-core
# development machine `minidiff bench ldm` measures the same thing on the shipped models,
# training step included (data/checkpoints/ldm.md).

# %%
if shipped:
    from minidiff.pipelines.load import load_pipeline
    pixel_unet = load_pipeline(args.pixel).model
    latent_net = load_pipeline(args.ldm).model
else:
    pixel_unet = UNet(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                      attention_resolutions=())
    latent_net = latent_unet
batch, repeats, S = (8, 3, 50) if args.quick else (64, 5, 50)


def ms_per_image(fn):
    fn()                                              # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times) / batch


x_pixel = Tensor(backend.randn(batch, 1, 28, 28))
x_latent = Tensor(backend.randn(batch, *ldm_space.shape))
steps_t = xp.full((batch,), 500, dtype=xp.int64)
with no_grad():
    f_pixel = ms_per_image(lambda: pixel_unet(x_pixel, steps_t))
    f_latent = ms_per_image(lambda: latent_net(x_latent, steps_t))
d_decoder = ms_per_image(lambda: ldm_space.decode(x_latent.data))
pixel_cost, latent_cost = S * f_pixel, S * f_latent + d_decoder
print(f"(10.4) cost per image, S = {S} steps, batch {batch} (shared machine: indicative):")
print(f"{'':24s} {'ms/image/forward':>17s} {'ms/image, S steps':>18s}")
print(f"{'pixel U-Net':24s} {f_pixel:17.3f} {pixel_cost:18.1f}")
print(f"{'latent U-Net + decoder':24s} {f_latent:17.3f} {latent_cost:18.1f}  "
      f"(decoder {d_decoder:.2f} ms/image, once)")
print(f"the latent model samples {pixel_cost / latent_cost:.1f}x cheaper per image "
      "(a timing: printed, not asserted)")
# what is asserted is counted: the positions each U-Net's first convolution runs over
assert x_pixel.shape[-2] * x_pixel.shape[-1] == 784 and x_latent.shape[-2] * x_latent.shape[-1] == 49

# %% [markdown]
# ## Figures

# %%
plt = pyplot()   # None without matplotlib: the figures are then skipped
if plt is not None:
    # the latent space: the scaled posterior means of test digits, projected on their two
    # principal directions and coloured by label; and a straight line between two digits'
    # latents, decoded
    test_x, test_y = load_mnist("test")
    count = 500 if args.quick else 2000
    with no_grad():
        means = host(autoencoder.encode(Tensor(to_unit_range(test_x[:count]))).mean.data)
    flat = scale_factor * means.reshape(count, -1).astype(np.float64)
    centred = flat - flat.mean(0)
    _, _, directions = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ directions[:2].T
    first, second = 0, int(np.argmax(host(test_y[:count]) != host(test_y[0])))
    path = np.linspace(0.0, 1.0, 8)[:, None] * (flat[second] - flat[first]) + flat[first]
    with no_grad():
        decoded = host(autoencoder.decode(Tensor(backend.to_device(
            (path / scale_factor).reshape((8,) + means.shape[1:]).astype(means.dtype)))).data)
    fig = plt.figure(figsize=(12, 4.4))
    ax = fig.add_subplot(1, 2, 1)
    points = ax.scatter(projected[:, 0], projected[:, 1], c=host(test_y[:count]), cmap="tab10",
                        s=6)
    fig.colorbar(points, ax=ax, label="digit")
    ax.set(title=f"s E(x) of {count} test digits, first two principal directions",
           xlabel="PC 1", ylabel="PC 2")
    for k in range(8):                      # the right half: two rows of four, in order
        axk = fig.add_subplot(2, 8, 8 * (k // 4) + 4 + k % 4 + 1)
        axk.imshow(np.clip(decoded[k, 0], -1, 1), cmap="gray", vmin=-1, vmax=1)
        axk.set_title(f"{k / 7:.2f}", fontsize=8)
        axk.axis("off")
    fig.text(0.6, 0.95, "D(z / s) on a straight line between two digits' latents",
             fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "10_latent_space.png", dpi=100)
    plt.close(fig)
    print(f"figure written to {out_dir / '10_latent_space.png'}")

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    steps = np.arange(1, T + 1)
    for label, v in (("Var = 1 (s z)", 1.0), (f"Var = {float(z.var()):.2f} (z)", float(z.var())),
                     ("Var = 25", 25.0), ("Var = 1/25", 1 / 25.0)):
        axes[0].semilogy(steps, abar * v / (1 - abar), label=label)
    axes[0].axhline(1.0, color="k", lw=0.5)
    axes[0].set(xlabel="t", ylabel="SNR(t) (10.2)", title="the schedule sees the data's scale")
    axes[0].legend(fontsize=7)
    axes[1].hist(z.ravel(), bins=80, alpha=0.5, density=True, label="z")
    axes[1].hist(scaled.ravel(), bins=80, alpha=0.5, density=True, label="s z")
    axes[1].set(title="latent values", xlabel="value")
    axes[1].legend()
    axes[2].bar(["pixel", "latent"], [pixel_cost, S * f_latent], label="U-Net, S steps")
    axes[2].bar(["latent"], [d_decoder], bottom=[S * f_latent], label="decoder, once")
    axes[2].set(ylabel="ms per image", title=f"sampling cost, S = {S} (10.4)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out_dir / "10_latent_diffusion.png", dpi=100)
    plt.close(fig)
    print(f"figure written to {out_dir / '10_latent_diffusion.png'}")

# %% [markdown]
# ## Summary
#
# * (10.1) An LDM is the DDPM of lessons 01-08 run on $z_0 = s\,E(x)$; its samples are
#   $D(z_0 / s)$.  The diffusion code is unchanged: only the space $x_0$ lives in differs
#   (`minidiff/data/spaces.py`).
# * (10.2) The scale factor $s = 1/\mathrm{std}(z)$ brings the latents to the scale the
#   schedule was made for; (10.3) then the noised latents keep unit variance from $t = 1$ to $T$.
# * The training set is encoded once; a step draws $z_0 = s(\mu + \sigma\epsilon)$ and costs only
#   the small U-Net.
# * (10.4) Sampling costs $S$ passes of a U-Net on 49 positions plus one decoder pass, instead
#   of $S$ passes on 784 pixels.

# %%
print("lesson 10: all checks passed")
