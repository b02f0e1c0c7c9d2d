# %% [markdown]
# # Lesson 09 — The autoencoder: Stable Diffusion's first half
#
# A pixel DDPM spends every step of its sampler on all 784 pixels of a digit, though most of
# them are background.  Latent diffusion (Rombach et al. 2022) first trains an autoencoder:
# an encoder $E$ that compresses an image $x$ to a small latent $z$, and a decoder $D$ that
# turns $z$ back into an image, $D(E(x)) \approx x$.  The diffusion model of lessons 01-08 then
# runs on $z$ (lesson 10), and only its final $z$ is decoded.  Stable Diffusion is exactly
# this, at $512\times512$ with $4\times64\times64$ latents; here $1\times28\times28$ digits
# become $4\times7\times7$ latents, 4x fewer numbers and a U-Net that runs at $7\times7$.
#
# The encoder does not output a single $z$ but a Gaussian $q(z \mid x)$ (a *variational*
# autoencoder), and a small KL term keeps those Gaussians near $\mathcal N(0, I)$, so that the latent
# space has no wild scale and no holes.  This lesson derives what that needs:
#
#     (9.1) the reparameterized sample          (9.4) the Gaussian negative log-likelihood
#     (9.2) KL as an expectation                (9.5) the training loss
#     (9.3) its closed form, checked against Monte Carlo     (9.6) the latent scale factor
#
#     python lessons/09_autoencoder.py            # ~a minute: the shipped ae.npz's figures too
#     python lessons/09_autoencoder.py --quick    # seconds: a tiny autoencoder (the tests)
#     python lessons/09_autoencoder.py --out DIR  # where the figure goes (default runs/lessons)

# %%
import math
import pathlib

from _lesson import host, lesson_parser, pyplot, start  # finds minidiff; --quick, --out
from minidiff import backend
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.models import AutoencoderKL, DiagonalGaussian
from minidiff.models.autoencoder import autoencoder_loss, scale_by_std
from minidiff.ops import silu
from minidiff.optim import AdamW
from minidiff.tensor import Tensor, no_grad

np = backend.host  # NumPy, for host-side numbers in this lesson

args, out_dir = start(lesson_parser("Lesson 09: the KL autoencoder",
                                     "a tiny autoencoder, a few seconds"))
REPO = pathlib.Path(__file__).resolve().parent.parent
SHIPPED = REPO / "data" / "checkpoints" / "ae.npz"


# %% [markdown]
# ## E and D: the shapes
#
# The encoder is the U-Net's down path without the time embedding: a 3x3 conv, ResBlocks,
# and two stride-2 convolutions 28 -> 14 -> 7.  Its last conv outputs 2c channels: c means
# and c log-variances, one Gaussian per latent number.  The decoder mirrors it with
# nearest-neighbour upsampling + conv (7 -> 14 -> 28) and ends in one channel.  We run the
# encoder layer by layer, print each shape, and check the result is `model.encode`'s.
#
# Why c = 4 latent channels: trained for the same 400 steps, c = 2 reconstructed 1000 test
# digits with MSE 0.0025 and c = 4 with 0.0022, while the classifier-FID of the
# reconstructions pointed the other way (4.3 against 7.4, at n = 1000, where FID is noisy): a
# near tie.  The latent U-Net's cost hardly depends on c (only its first and last
# convolutions see the c channels), so we kept the lower pixel error and Stable Diffusion's 4.

# %%
model = AutoencoderKL()
c = model.config
print(f"AutoencoderKL: {model.num_parameters():,} parameters, latents {model.latent_shape} "
      f"= {math.prod(model.latent_shape)} numbers for {28 * 28} pixels")
x = to_unit_range(load_mnist("test")[0][:4])
with no_grad():
    e = model.encoder
    h = e.conv_in(Tensor(x))
    print(f"  conv_in            {tuple(h.shape)}")
    for level, stage in enumerate(e.stages):
        h = stage(h)
        print(f"  level {level} ResBlocks {tuple(h.shape)}")
        if level < len(e.downsamples):
            h = e.downsamples[level](h)
            print(f"  downsample         {tuple(h.shape)}")
    moments = e.conv_out(silu(e.norm_out(e.mid(h))))
    print(f"  conv_out (mean | logvar) {tuple(moments.shape)}")
    q = model.encode(x)
    assert np.allclose(host(moments[:, :c.latent_channels]), host(q.mean), atol=1e-6)
    x_hat = model.decode(q.mode())
    print(f"  decoder: z {tuple(q.mean.shape)} -> {tuple(x_hat.shape)}")
assert tuple(q.mean.shape) == (4, 4, 7, 7) and tuple(x_hat.shape) == (4, 1, 28, 28)

# %% [markdown]
# ## The diagonal Gaussian and the reparameterization
#
# $q(z \mid x) = \mathcal N(\mu, \mathrm{diag}(\sigma^2))$, with $\mu$ and $\log\sigma^2$ from
# the encoder (a log, so any real output is a valid variance; clamped to $[-30, 20]$ so that
# exp stays finite).  Training needs a *sample* $z \sim q$ and its gradient with respect to
# $\mu$ and $\sigma$.  Sampling itself has no
# gradient, so we move the randomness outside:
#
# $$ z = \mu + \sigma \odot \epsilon, \qquad \epsilon \sim \mathcal N(0, I) \tag{9.1} $$
#
# Now $z$ is an ordinary function of $(\mu, \log\sigma^2)$: $\partial z/\partial\mu = 1$ and
# $\partial z/\partial \log\sigma^2 = \sigma\epsilon/2$.  We check autograd against these two derivatives.

# %%
mu = Tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True)
logvar = Tensor(np.array([0.0, -2.0, 1.0]), requires_grad=True)
eps = np.array([1.3, -0.4, 0.7])
z = DiagonalGaussian(mu, logvar).sample(eps)
z.sum().backward()
sigma = np.exp(0.5 * host(logvar))
print(f"(9.1) z = mu + sigma * eps = {np.round(host(z), 4)}; dz/dmu = {host(mu.grad)}, "
      f"dz/dlogvar = {np.round(host(logvar.grad), 4)} = sigma * eps / 2")
assert np.allclose(host(z), host(mu) + sigma * eps)
assert np.allclose(host(mu.grad), 1.0) and np.allclose(host(logvar.grad), sigma * eps / 2)

# %% [markdown]
# ## The KL term in closed form
#
# The KL divergence of $q$ from the prior $p = \mathcal N(0, 1)$ is an expectation under $q$:
#
# $$ \mathrm{KL}(q \,\|\, p) = \mathbb E_{z \sim q}\big[\log q(z) - \log p(z)\big] \tag{9.2} $$
#
# For one latent number, write out the two log densities:
#
# $$ \log q(z) = -\tfrac12 \log 2\pi - \tfrac12 \log \sigma^2 - \frac{(z - \mu)^2}{2\sigma^2},
#    \qquad \log p(z) = -\tfrac12 \log 2\pi - \frac{z^2}{2} $$
#
# The $\log 2\pi$ cancel.  Under $q$, $\mathbb E[(z - \mu)^2] = \sigma^2$ (the variance) and
# $\mathbb E[z^2] = \mathrm{Var}\,z + (\mathbb E z)^2 = \sigma^2 + \mu^2$, so
#
# $$ \mathrm{KL} = -\tfrac12 \log \sigma^2 - \frac{\sigma^2}{2\sigma^2} + \frac{\sigma^2 + \mu^2}{2}
#    = \tfrac12\big(\mu^2 + \sigma^2 - 1 - \log \sigma^2\big) \tag{9.3} $$
#
# It is zero exactly at $\mu = 0$, $\sigma = 1$, and grows with $|\mu|$ and with $\sigma$ away
# from 1 in either direction (a tiny $\sigma$ costs $-\tfrac12\log\sigma^2$: an encoder that wants to send
# precise numbers pays for each one).  With independent latents the KL of the whole
# diagonal Gaussian is the sum over the latent numbers.  We check (9.3) against a
# Monte-Carlo estimate of (9.2), with both densities evaluated from their formulas.

# %%
rng = np.random.default_rng(0)
draws = 200_000 if not args.quick else 50_000
for m, lv in ((0.0, 0.0), (1.5, 0.0), (0.0, -2.0), (-1.0, 1.0), (2.0, -4.0)):
    closed = float(host(DiagonalGaussian(np.array([[m]]), np.array([[lv]])).kl())[0])
    s = math.exp(0.5 * lv)
    zs = m + s * rng.standard_normal(draws)
    log_q = -0.5 * math.log(2 * math.pi) - 0.5 * lv - (zs - m) ** 2 / (2 * s * s)
    log_p = -0.5 * math.log(2 * math.pi) - zs ** 2 / 2
    ratio = log_q - log_p
    estimate, stderr = ratio.mean(), ratio.std() / math.sqrt(draws)
    print(f"(9.3) mu {m:+.1f}, log sigma^2 {lv:+.1f}: closed form {closed:.4f}, "
          f"Monte Carlo (9.2) {estimate:.4f} +- {stderr:.4f}")
    assert abs(closed - estimate) < 5 * stderr + 1e-9

# %% [markdown]
# ## The loss
#
# A VAE maximises a lower bound on $\log p(x)$:
# $\mathbb E_q[\log p(x \mid z)] - \mathrm{KL}(q(z \mid x) \,\|\, p(z))$.  With a Gaussian
# decoder $p(x \mid z) = \mathcal N(D(z), \sigma^2)$ the first term is (up to constants) a
# squared error, with a Laplace decoder an absolute error.  The negative log-likelihood of $x$ under a
# Gaussian, summed over elements, is
#
# $$ -\log \mathcal N(x; \mu, \sigma^2) = \tfrac12 \sum \Big(\log 2\pi + \log \sigma^2
#    + \frac{(x - \mu)^2}{\sigma^2}\Big) \tag{9.4} $$
#
# Latent diffusion does not want a good likelihood but sharp reconstructions with a *small*
# KL weight: the KL only has to keep the latent scale sane, not compress.  What CompVis
# trains (Rombach et al. 2022, appendix G; `LPIPSWithDiscriminator` in their code) is richer
# than what follows: a reconstruction term $r = |x - D(z)| + \text{LPIPS}(x, D(z))$ (an absolute
# error plus a learned perceptual distance) used as $r / e^{\ell} + \ell$ with one learned
# log-variance $\ell$ (the shape of (9.4)), the KL term, and, after a warm-up, a patch-GAN
# discriminator's adversarial loss.  minidiff drops the LPIPS and the GAN terms (each needs a
# second trained network, and MNIST digits are simple enough without them) and the learned
# $\ell$, and keeps a reconstruction error and the KL:
#
# $$ \text{loss} = \frac{1}{784}\,\mathrm{mean}_n\Big[\sum_\text{pixels} \big(x_n - D(z_n)\big)^2
#    + w_\text{KL}\,\mathrm{KL}\big(q(z \mid x_n) \,\|\, \mathcal N(0, I)\big)\Big],
#    \qquad z_n = \mu_n + \sigma_n \odot \epsilon \tag{9.5} $$
#
# with $w_\text{KL}$ = `kl_weight` = $10^{-4}$ (divided by the 784 pixels so the loss reads as an
# error per pixel).
# Why the squared error (a Gaussian decoder) and not $|\cdot|$ (Laplace, CompVis' pixel term):
# measured, not assumed.  Trained for the same 400 steps (batch 32, $4\times7\times7$ latents), the
# squared error reconstructed 1000 test digits with MSE 0.0022 (PSNR 26.6 dB) and a
# classifier-FID of the reconstructions of 7.4, the absolute error with MSE 0.0048 (23.2 dB)
# and 35.6 (data/checkpoints/ae.md).  A likely reason: |.| is minimised by the conditional
# *median*, and a pixel on the edge of a stroke is either ink or background, so where the
# decoder is unsure the median drops the ink; the squared error's mean keeps a grey stroke,
# which the next steps sharpen.  (|.|'s gradient also does not shrink near the optimum, so a
# short run ends noisier.)  We check (9.5) against the library's `autoencoder_loss`.

# %%
x = to_unit_range(load_mnist("train")[0][:8])
noise = backend.randn(8, *model.latent_shape)
q = model.encode(x)
x_hat = model.decode(q.sample(noise))
loss, terms = autoencoder_loss(x, x_hat, q, kl_weight=1e-4, recon="l2")
mean_, lv_ = host(q.mean).astype(np.float64), host(q.logvar).astype(np.float64)
kl_by_hand = 0.5 * (mean_ ** 2 + np.exp(lv_) - 1 - lv_).reshape(8, -1).sum(axis=1)
by_hand = (((host(x_hat) - host(x)) ** 2).reshape(8, -1).sum(axis=1) + 1e-4 * kl_by_hand).mean()
by_hand /= 784
print(f"(9.5) loss by hand {by_hand:.6f} == autoencoder_loss {loss.item():.6f} "
      f"(rec {terms['rec']:.4f} per pixel, KL {terms['kl']:.4f} nats per latent number)")
assert abs(by_hand - loss.item()) < 1e-5

# %% [markdown]
# ## Training, briefly
#
# The real run is `minidiff train --preset ae-quick` (the same trainer as the diffusion
# model: progress, checkpoints, exact resume).  Here a few AdamW steps on (9.5) show the
# reconstruction error falling; with --quick a tiny autoencoder on 16x16 crops.

# %%
if args.quick:
    small = AutoencoderKL(image_size=16, base_channels=8, channel_mults=(1, 2),
                          latent_channels=2, groups=4)
    data = to_unit_range(load_mnist("train")[0][:512, :, 6:22, 6:22])
    steps, batch = 30, 16
else:
    small = AutoencoderKL()
    data = to_unit_range(load_mnist("train")[0][:4096])
    steps, batch = 150, 32
optimizer = AdamW(small.parameters(), lr=3e-3, weight_decay=0.0)
losses = []
for step in range(steps):
    xb = data[backend.to_device(backend.randint(0, len(data), (batch,)))]
    reconstruction, posterior = small(xb)
    loss, terms = autoencoder_loss(xb, reconstruction, posterior, kl_weight=1e-4)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    if step % max(1, steps // 5) == 0 or step == steps - 1:
        print(f"  step {step:4d}  loss {loss.item():.4f}  rec {terms['rec']:.4f}  "
              f"KL/dim {terms['kl']:.3f}")
window = max(3, steps // 6)
first, last = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
print(f"mean loss over the first {window} steps {first:.4f}, over the last {window} {last:.4f}")
assert last < 0.7 * first, "the loss should fall"

# %% [markdown]
# ## The scale factor
#
# The diffusion model of lesson 10 adds noise until its input is $\mathcal N(0, I)$, and its
# schedule was designed for data of order 1: Ho et al.'s images in $[-1, 1]$ (MNIST's pixels
# there have std ~0.6), for which $\sqrt{\bar\alpha_T} \approx 0.006$ leaves no signal at
# $t = T$ and the first step's noise $\sqrt{\beta_1} = 0.01$ is below a pixel's quantization
# step $2/255$.  A small KL weight leaves the latents at whatever scale the encoder found
# convenient (lesson 10 shows what a wrong scale does), so they are rescaled by one number
# measured on the training data, to unit variance, the convention Rombach et al. chose
# (CompVis' `scale_by_std`):
#
# $$ s = 1 / \mathrm{std}(z), \quad z \sim q(z \mid x) \text{ over training images}; \quad
#    \text{the LDM works on } s z \text{ and decodes } D(z_0 / s) \tag{9.6} $$
#
# Stable Diffusion's famous 0.18215 is this number for its autoencoder.  The trainer
# measures it at the end of a run and stores it in the checkpoint; here we measure it for
# the model just trained, on half of the images, and check that it brings the latents of the
# *other* half to unit std (on the images it was measured on that would hold by definition).

# %%
small.eval()
held, other = data[:256], data[256:512]
scale = scale_by_std(small, held, batch=128)
with no_grad():
    z_scaled = host(small.encode(other).sample()) * scale
print(f"(9.6) scale = 1 / std(z) = {scale:.4f} (256 images); std of scale * z on 256 others = "
      f"{z_scaled.std():.4f}")
assert abs(z_scaled.std() - 1.0) < 0.05

# %% [markdown]
# ## The shipped autoencoder
#
# `data/checkpoints/ae.npz` was trained by `minidiff train --preset ae-quick` (command, time
# and figures in data/checkpoints/ae.md).  Outside --quick we load it, reconstruct test digits
# it never saw, and measure the error; its stored scale factor sits beside it.

# %%
figure_rows = [("originals", host(held[:8]))]
with no_grad():
    figure_rows.append(("tiny model", np.clip(host(small.decode(small.encode(held[:8]).mode())),
                                              -1, 1)))
if not args.quick and SHIPPED.exists():
    from minidiff.pipelines.load import load_autoencoder
    shipped, config, shipped_scale = load_autoencoder(SHIPPED)
    test = to_unit_range(load_mnist("test")[0][:1000])
    with no_grad():
        posterior = shipped.encode(test)
        rec = np.clip(host(shipped.decode(posterior.mode())), -1, 1)
        z_scaled = host(posterior.sample()) * shipped_scale   # the histogram: shipped latents
    print(f"shipped ae.npz: std of scale * z on 1000 test digits {z_scaled.std():.4f}")
    mse = float(((rec - host(test)) ** 2).mean()) / 4          # on the [0, 1] pixel scale
    print(f"shipped ae.npz on 1000 test digits: MSE {mse:.5f}, PSNR "
          f"{10 * math.log10(1 / mse):.2f} dB; stored scale factor {shipped_scale:.5f}")
    assert mse < 0.02
    figure_rows = [("test digits", host(test[:8])), ("shipped ae.npz", rec[:8])]
elif not args.quick:
    print(f"{SHIPPED} not found: train it with 'minidiff train --preset ae-quick'")

# %% [markdown]
# ## A figure: originals above reconstructions, and the latent histogram

# %%
plt = pyplot()   # None without matplotlib: the figures are then skipped
if plt is not None:
    fig, axes = plt.subplots(3, 8, figsize=(10, 4.4))
    for row, (label, images) in enumerate(figure_rows):
        for col in range(8):
            axes[row, col].imshow(images[col, 0], cmap="gray", vmin=-1, vmax=1)
            axes[row, col].axis("off")
        axes[row, 0].set_title(label, fontsize=8, loc="left")
    for col in range(8):
        axes[2, col].axis("off")
    hist = fig.add_subplot(3, 1, 3)
    hist.hist(z_scaled.ravel(), bins=60, density=True, alpha=0.7, label="scale * z")
    grid = np.linspace(-4, 4, 200)
    hist.plot(grid, np.exp(-grid ** 2 / 2) / math.sqrt(2 * math.pi), label="N(0, 1)")
    hist.legend(fontsize=8)
    hist.set(xlabel="scaled latent value (9.6)")
    fig.tight_layout()
    fig.savefig(out_dir / "09_autoencoder.png", dpi=100)
    plt.close(fig)
    print(f"figure written to {out_dir / '09_autoencoder.png'}")

print("lesson 09: all checks passed")
