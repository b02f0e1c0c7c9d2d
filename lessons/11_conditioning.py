# %% [markdown]
# # Lesson 11 — Conditioning: text by cross-attention, spatial inputs by concatenation
#
# The article's section 11: the real power of Stable Diffusion is generating from a prompt.
# A switch selects the kind of conditioning input; text goes through a language model $\tau_\theta$
# to embeddings that multi-head attention Attention(Q, K, V) maps into the U-Net; spatially
# aligned inputs (semantic maps, images, inpainting) are concatenated to the U-Net's input.
# This lesson builds each piece on MNIST and checks it against a computation of its own:
#
# 1. Captions: thickness (11.1) and slant (11.2) measured on the pixels, cut into thirds
# 2. Cross-attention (11.3), with its shapes, by hand against the library's layer; the
#    SpatialTransformer block around it, the identity at initialisation
# 3. $\tau_\theta$, and the switch none / crossattn / concat / hybrid as `build_model` builds it
# 4. Classifier-free guidance (11.4) from Bayes' rule, (11.5)-(11.7), exact on a Gaussian
#    toy; then a sweep of the guidance scale s on the shipped text-to-image model
# 5. Inpainting: concatenation (11.9) against replacement (11.8) on the same digits
#
#     python lessons/11_conditioning.py [--quick] [--out DIR]
#
# The models read are data/checkpoints/txt2img.npz (text, latent), inpaint.npz (text and the
# mask, "hybrid") and ldm.npz (unconditional, latent).  With `--quick`, or where a model is not
# shipped, tiny stand-ins trained for two steps take their place, and the lesson says so: their
# numbers show the code path, not the quality.

# %%
import math
import tempfile

from _lesson import host, lesson_parser, pyplot, show, start  # finds minidiff; --quick, --out
from minidiff import backend
from minidiff.data import captions
from minidiff.config.build import build_model
from minidiff.config.vocabulary import CONDITIONINGS
from minidiff.diffusion.guidance import guided
from minidiff.pipelines.conditions import concat_input
from minidiff.data.caption_figures import save_attribute_figure
from minidiff.data.captions import CaptionError, CaptionStats, Tokenizer, VOCABULARY
from minidiff.pipelines.inpaint import load_inpainter
from minidiff.pipelines.load import load_pipeline
from minidiff.data.mnist import load_mnist, to_unit_range
from minidiff.diffusion import NoiseSchedule, ddim_sample, q_sample
from minidiff.diffusion.oracles import GaussianMixture
from minidiff.evaluate.inpainting import compare_figure, inpainting_accuracy
from minidiff.evaluate.prompts import (attribute_adherence, digit_prompts, prompt_samples,
                                       prompted_accuracy)
from minidiff.data.images import save_grid
from minidiff.data.masks import named_mask
from minidiff.models.blocks import SpatialTransformer
from minidiff.models.text_encoder import TextEncoder, key_mask
from minidiff.nn import functional as F
from minidiff.data.paths import DataNotFoundError, find
from minidiff.data.spaces import PixelSpace
from minidiff.tensor import Tensor, no_grad
from minidiff.checkpoint import load_checkpoint
from minidiff.config.presets import resolve
from minidiff.train.trainer import Trainer

np = backend.host

args, out_dir = start(lesson_parser("Lesson 11: conditioning", "tiny stand-ins trained for two "
                                    "steps instead of the shipped models (what the tests run)"),
                      dtype="float64")
QUICK = args.quick
train_images, train_labels = load_mnist("train")
test_images, test_labels = load_mnist("test")
if QUICK:
    train_images, train_labels = train_images[:5000], train_labels[:5000]


def shipped(name):
    """The path of data/checkpoints/<name>, or None (in --quick, or while it is not shipped)."""
    if QUICK:
        return None
    try:
        return find(f"checkpoints/{name}")
    except DataNotFoundError:
        return None


# %% [markdown]
# ## 1. Captions from the pixels
#
# MNIST has labels but no words about style, so the captions' attributes are measured on the
# image itself (`minidiff/data/captions.py`).  With $I$ = image / 255 and $E^k$ the $k$-fold
# $3\times3$ grey erosion (a minimum filter), the ink-weighted mean erosion depth $D$ and the
# thickness are
#
# $$ D = \frac{\sum_{k \ge 0} \sum E^k(I)}{\sum I}, \qquad \text{thickness} = 4D - 2. \tag{11.1} $$
#
# For a binary image a pixel survives k erosions exactly when its chessboard distance to the
# background exceeds k, so D is the mean distance of the ink to the background; across a bar
# of even width w the distances are 1, 2, ..., w/2, w/2, ..., 1, with mean w/4 + 1/2, and
# (11.1) gives w.  We check both: bars of known width (the full height of the frame: the
# border counts as continuing the edge pixels, so the bars have no ends), and D against a
# brute-force distance transform (every ink pixel against every background pixel) on
# binarised test digits.

# %%
bars = np.zeros((4, 28, 28), dtype=np.uint8)
widths = (2, 4, 6, 8)
for i, w in enumerate(widths):
    bars[i, :, 14 - w // 2:14 - w // 2 + w] = 255
np.testing.assert_allclose(captions.measure_thickness(bars), widths, rtol=1e-12)


def brute_force_thickness(binary):
    """4 D - 2 with D the mean chessboard distance from ink to background, pixel against
    pixel (no erosion)."""
    yy, xx = np.mgrid[:28, :28]
    coords = np.stack([yy.ravel(), xx.ravel()], 1)
    out = []
    for image in binary:
        ink = image.ravel() > 0
        d = np.abs(coords[ink][:, None, :] - coords[~ink][None, :, :]).max(axis=2).min(axis=1)
        out.append(4 * d.mean() - 2)
    return np.array(out)


binary = np.where(test_images[:20, 0] >= 128, 255, 0).astype(np.uint8)
np.testing.assert_allclose(captions.measure_thickness(binary), brute_force_thickness(binary),
                           rtol=1e-12)
print("(11.1) thickness of bars of width", widths, "=",
      np.round(captions.measure_thickness(bars), 3).tolist(), "; on 20 binarised digits == the "
      "brute-force distance transform")

# %% [markdown]
# Slant: with the ink as weights, the centred second moments
# $\mu_{11} = \sum I\,(x - \bar x)(y - \bar y)$ and $\mu_{02} = \sum I\,(y - \bar y)^2$
# ($x$ right, $y$ down).  Shearing an upright shape ($\mu_{11} = 0$) by
# $x \mapsto x + a\,(y - \bar y)$ gives $\mu_{11} = a\,\mu_{02}$, so the absolute shear is
#
# $$ \text{slant} = \left|\mu_{11} / \mu_{02}\right|. \tag{11.2} $$
#
# Checked on parallelograms of known shear, and against NumPy's weighted covariance.

# %%
shears = (0.0, 0.25, 0.5)
slabs = np.zeros((len(shears), 28, 28), dtype=np.uint8)
for i, s in enumerate(shears):
    for y in range(4, 24):
        x0 = int(round(12 + s * (y - 13.5)))
        slabs[i, y, x0:x0 + 4] = 255
measured = captions.measure_slant(slabs)
np.testing.assert_allclose(measured, shears, atol=0.03)
yy, xx = np.mgrid[:28, :28]
by_cov = []
for image in test_images[:20, 0].astype(np.float64):
    c = np.cov(np.stack([xx.ravel(), yy.ravel()]), aweights=image.ravel(), bias=True)
    by_cov.append(abs(c[0, 1] / c[1, 1]))
np.testing.assert_allclose(captions.measure_slant(test_images[:20]), by_cov, rtol=1e-10)
print("(11.2) slant of parallelograms sheared by", shears, "=", np.round(measured, 3).tolist(),
      "; on 20 test digits == |cov(x, y) / var(y)| (np.cov)")

# %% [markdown]
# Each attribute is cut at its tertiles over the training set: the lowest third is "thin" /
# "upright", the highest "thick" / "slanted", the middle third gets no word.  A caption is made
# from the label and these words with one of several templates ("a thick seven", "7", "a thin
# slanted four"); the edges are stored in every text checkpoint, and the shipped model's must be
# the ones measured here.  The figure: test digits sorted by each attribute.

# %%
stats = CaptionStats.from_images(train_images)
show(f"thickness tertile edges (px, {len(train_images)} images)",
     f"{stats.thickness_edges[0]:.4f} {stats.thickness_edges[1]:.4f}")
show("slant tertile edges (|shear|)", f"{stats.slant_edges[0]:.4f} {stats.slant_edges[1]:.4f}")
txt2img_path = shipped("txt2img.npz")
if txt2img_path is not None:
    stored = CaptionStats.from_arrays(load_checkpoint(txt2img_path))
    np.testing.assert_allclose(stored.thickness_edges + stored.slant_edges,
                               stats.thickness_edges + stats.slant_edges, rtol=1e-9)
    print("the edges stored in txt2img.npz are these")
thick, slant = captions.measure_thickness(test_images[:8]), captions.measure_slant(test_images[:8])
examples = stats.captions(test_images[:8], test_labels[:8], np.arange(8) * 7 + 3)
for i, caption in enumerate(examples):
    print(f"    test:{i}  thickness {thick[i]:.2f}  slant {slant[i]:.2f}  -> {caption!r}")
strips = save_attribute_figure(test_images[:2000] if QUICK else test_images,
                               out_dir / "11_attributes.png")
for name, measure in (("thickness", captions.measure_thickness),
                      ("slant", captions.measure_slant)):
    assert np.all(np.diff(measure(strips[name][1])) >= 0), name    # re-measured: ascending
print(f"saved {out_dir / '11_attributes.png'} (top: thickness, bottom: slant, low to high)")

# %% [markdown]
# ## 2. Cross-attention, with its shapes
#
# The U-Net's features at one resolution, $\varphi(z_t)$ $(N, C, h, w)$, are flattened to $N$
# sequences of $HW$ tokens of width $d = C$; the caption becomes $\tau_\theta(y)$
# $(N, L, d_\tau)$.  Queries come from
# the image, keys and values from the text:
#
# $$ Q = \varphi W_Q^\top \;(N, HW, d), \qquad K = \tau W_K^\top \;(N, L, d), \qquad
#    V = \tau W_V^\top \;(N, L, d) $$
#
# $$ \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\Big(\frac{Q K^\top}{\sqrt{d_h}}\Big) V
#    \quad (N, HW, d) \tag{11.3} $$
#
# per head: $d$ splits into $h$ heads of $d_h = d/h$, the scores $QK^\top$ are $(N, h, HW, L)$,
# one weight per (pixel, token) pair, and each pixel's output is a mixture of the values of the
# caption's tokens.  Padding tokens get the score $-\infty$ before the softmax (weight 0), so what
# sits at a padded position is never read.  Below: the library's layer against (11.3) written
# out in NumPy on the layer's own weights.

# %%
N, HW, d, L, d_tau, heads = 2, 9, 8, 5, 6, 2
block = SpatialTransformer(d, heads, groups=2, context_dim=d_tau)
attention = block.cross_attention
rng = np.random.default_rng(0)
phi = rng.standard_normal((N, HW, d))
tau = rng.standard_normal((N, L, d_tau))
keep = np.ones((N, L), dtype=bool)
keep[1, 3:] = False                                   # caption 1: two padding tokens


def weights_of(linear):
    return host(linear.weight), host(linear.bias)


def by_hand(phi, tau, keep):
    """(11.3) with the layer's weights: projections, heads, masked softmax, output proj."""
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = map(weights_of, (
        attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj))
    split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, -1).transpose(0, 2, 1, 3)
    q, k, v = split(phi @ wq.T + bq), split(tau @ wk.T + bk), split(tau @ wv.T + bv)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads)        # (N, h, HW, L)
    scores = np.where(keep[:, None, None, :], scores, -np.inf)
    a = np.exp(scores - scores.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(N, HW, d)
    return o @ wo.T + bo, a


expected, weights = by_hand(phi, tau, keep)
with no_grad():
    library = host(attention(Tensor(backend.to_device(phi)), Tensor(backend.to_device(tau)),
                             backend.to_device(keep).reshape(N, 1, 1, L)))
np.testing.assert_allclose(library, expected, rtol=1e-10, atol=1e-12)
assert np.allclose(weights.sum(-1), 1) and np.all(weights[1, :, :, 3:] == 0)
changed = tau.copy()
changed[1, 3:] = 100.0                                # what sits under the padding
with no_grad():
    again = host(attention(Tensor(backend.to_device(phi)), Tensor(backend.to_device(changed)),
                           backend.to_device(keep).reshape(N, 1, 1, L)))
np.testing.assert_allclose(again, library, rtol=1e-12)
preset = resolve("txt2img-quick")
show("in txt2img's middle block (7x7 latent)", f"Q (N, 49, {preset['base_channels']}), K and V "
     f"(N, {1 + preset['max_tokens']}, {preset['base_channels']}) from tau (N, "
     f"{1 + preset['max_tokens']}, {preset['context_dim']}), {preset['num_heads']} heads of "
     f"{preset['base_channels'] // preset['num_heads']}, scores (N, {preset['num_heads']}, 49, "
     f"{1 + preset['max_tokens']})")
print(f"(11.3) cross-attention == softmax(Q K^T / sqrt(d_h)) V by hand: Q {(N, HW, d)}, "
      f"K, V {(N, L, d)} from tau {(N, L, d_tau)}, scores {weights.shape}; max |diff| "
      f"{np.abs(library - expected).max():.1e}; padded tokens get weight 0 and are never read")

# %% [markdown]
# The layer sits in a `SpatialTransformer` (the LDM block, `minidiff/models/blocks.py`):
#
#     h = proj_in(GroupNorm(x))                 (N, C, h, w) -> (N, HW, C)
#     h = h + SelfAttention(LN(h))              pixels attend to pixels
#     h = h + CrossAttention(LN(h), tau(y))     pixels attend to the caption, (11.3)
#     h = h + FF(LN(h))                         Linear(C, 4C), SiLU, Linear(4C, C)
#     out = x + proj_out(h)                     proj_out zero at initialisation
#
# Because proj_out starts at zero, a new block is the identity: inserting it into a trained
# U-Net changes nothing until training moves proj_out.  We check that, then give proj_out
# weights and recompute the block step by step from its own parts.

# %%
x_img = backend.to_device(rng.standard_normal((N, d, 3, 3)))
context = Tensor(backend.to_device(tau))
mask = backend.to_device(keep)
with no_grad():
    assert np.array_equal(host(block(Tensor(x_img), context, mask)), host(x_img))
    for p in (block.proj_out.weight, block.proj_out.bias):
        p.data = backend.to_device(0.3 * rng.standard_normal(p.shape))
    h = block.proj_in(block.norm(Tensor(x_img))).reshape(N, d, HW).transpose(0, 2, 1)
    h = h + block.self_attention(block.norm1(h))
    h = h + block.cross_attention(block.norm2(h), context, mask.reshape(N, 1, 1, L))
    h = h + block.ff_out(F.silu(block.ff_in(block.norm3(h))))
    steps = host(x_img) + host(block.proj_out(h.transpose(0, 2, 1).reshape(N, d, 3, 3)))
    whole = host(block(Tensor(x_img), context, mask))
np.testing.assert_allclose(whole, steps, rtol=1e-12)
assert np.abs(whole - host(x_img)).max() > 1e-3     # no longer the identity
print("SpatialTransformer: the identity at initialisation (proj_out = 0); with proj_out "
      "trained, == norm, proj_in, self-attn, cross-attn, FF, proj_out, residual step by step")

# %% [markdown]
# ## 3. tau_theta and the switch
#
# A caption is split into words, each word an index into a vocabulary of 31 entries (0 is
# padding), padded to `max_tokens` = 8.  tau_theta (`minidiff/models/text_encoder.py`) is a
# small transformer trained jointly with the U-Net from scratch, as LDM trains its encoder:
# token embedding plus a learned position embedding, a learned start vector in front (never
# masked, so the empty caption still has a key: the model's "no condition"), two pre-LayerNorm
# blocks of self-attention and an MLP, a final LayerNorm: (N, 8) tokens -> (N, 1 + 8, 64).

# %%
tokenizer = Tokenizer(8)
for caption in ("a thick seven", "7", "a thin slanted four", ""):
    print(f"    {caption!r:24s} -> {tokenizer.encode(caption)[0].tolist()}")
try:
    tokenizer.encode("a fat seven")
    raise AssertionError("an unknown word was accepted")
except CaptionError as error:
    print("    'a fat seven'            ->", str(error)[:92], "...")
encoder = TextEncoder(len(VOCABULARY), 64, 2, 4, 8)
tokens = tokenizer.encode(["seven", "a thick seven"])
with no_grad():
    tau_y = host(encoder(backend.to_device(tokens)))
    short = host(encoder(backend.to_device(tokens[:1, :1])))      # "seven" without padding
show("tau_theta(y) for 2 captions", f"{tau_y.shape} (N, 1 + max_tokens, context_dim)")
show("keys that may be attended", key_mask(tokens).astype(int).tolist())
np.testing.assert_allclose(tau_y[0, :2], short[0], rtol=1e-10, atol=1e-12)
print("padding is masked inside tau_theta too: 'seven' padded to 8 tokens == 'seven' alone")

# %% [markdown]
# The switch (`minidiff/config/build.py` builds it, `minidiff/models/conditioned.py` is the network, after CompVis' `DiffusionWrapper`) is one config key.
# What each kind feeds the U-Net, as `build_model` builds it from the txt2img preset:
#
#     none       eps(z_t, t)                                  the U-Net alone
#     crossattn  eps(z_t, t, tau(y))                          context into SpatialTransformers
#     concat     eps([z_t, m, E(masked x)], t)                1 + C more input channels
#     hybrid     both
#
# Concatenation changes only the first convolution: 1 + C = 5 more input channels, each with
# a 3x3 kernel for every one of the base channels.

# %%
counts = {}
for kind in CONDITIONINGS:
    config = resolve("txt2img-quick", overrides={"conditioning": kind})
    model = build_model(config)            # a ConditionedUNet for every kind
    unet, text = model.unet, model.text_encoder
    counts[kind] = (sum(p.size for p in unet.parameters()),
                    sum(p.size for p in text.parameters()) if text is not None else 0)
    c = unet.config
    print(f"    {kind:9s} input channels {c.in_channels} + {c.concat_channels} concat, context "
          f"{c.context_dim}: U-Net {counts[kind][0]:,} + tau_theta {counts[kind][1]:,} "
          "parameters")
extra = (1 + config["in_channels"]) * config["base_channels"] * 3 * 3
assert counts["concat"][0] - counts["none"][0] == extra
assert counts["hybrid"][0] - counts["crossattn"][0] == extra
assert counts["crossattn"][1] == counts["hybrid"][1] > 0 == counts["concat"][1]
print(f"concat adds (1 + C) x base x 3 x 3 = {extra:,} weights to conv_in, nothing else")

# %% [markdown]
# ## 4. Classifier-free guidance from Bayes' rule
#
# The result first (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"): one network
# trained on captions and, with probability 0.1, on the empty caption $\varnothing$ gives both
# $\epsilon(x_t, y)$ and $\epsilon(x_t, \varnothing)$, and sampling uses
#
# $$
# \tilde\epsilon(x_t, y) = \epsilon(x_t, \varnothing)
#   + s\,\big(\epsilon(x_t, y) - \epsilon(x_t, \varnothing)\big). \tag{11.4}
# $$
#
# **The convention.**  minidiff's guidance scale $s$ (`--guidance S`, the config's
# `guidance`) multiplies the *difference*, as Rombach et al.'s latent-diffusion code and
# Stable Diffusion's `guidance_scale` do: $s = 0$ is the unconditional model, $s = 1$ the plain
# conditional one, $s > 1$ pushes further towards $y$.  Ho & Salimans write the same mixture
# as $\tilde\epsilon = (1 + w)\,\epsilon(x_t, y) - w\,\epsilon(x_t, \varnothing)$, so
#
# $$ s = 1 + w, \qquad w = s - 1: $$
#
# their $w = 0$ (no guidance) is our $s = 1$, and their $w = 1$ or $w = 3$ is our $s = 2$ or
# $s = 4$.  (This $s$ is the guidance scale only: lesson 10's $s$ is the latents' scale factor,
# lesson 08's a DDIM step.)  Dhariwal & Nichol's (2021, "Diffusion Models Beat GANs on Image Synthesis")
# *classifier* guidance adds $s_c\,\nabla \log p_\phi(y \mid x_t)$, the gradient of a
# separately trained classifier, to a model's score: added to the unconditional score its
# $s_c$ is our $s$ in (11.7) below; added to the conditional score (their best results) it
# is our $s - 1$, like $w$.
#
# **Why.**  The network's noise prediction is a scaled score,
# $\epsilon(x_t) = -\sqrt{1-\bar\alpha_t}\,\nabla \log p(x_t)$ (lesson 08, section 3), with the
# caption or without.  Bayes' rule $p(x \mid y) = p(y \mid x)\,p(x) / p(y)$ gives, since $p(y)$
# does not depend on $x$,
#
# $$ \nabla \log p(x \mid y) = \nabla \log p(x) + \nabla \log p(y \mid x), \tag{11.5} $$
#
# so the model holds an implicit classifier, $p(y \mid x) \propto p(x \mid y) / p(x)$:
#
# $$ \nabla \log p(y \mid x) = \nabla \log p(x \mid y) - \nabla \log p(x). \tag{11.6} $$
#
# Tilting $p(x)$ by that classifier raised to a power $s$, $p(x)\,p(y \mid x)^s$ (a sharper
# classifier for $s > 1$), has the score
#
# $$ \nabla \log p(x) + s\,\nabla \log p(y \mid x) = (1 - s)\,\nabla \log p(x)
#    + s\,\nabla \log p(x \mid y), \tag{11.7} $$
#
# which times $-\sqrt{1-\bar\alpha_t}$ is (11.4).  That is a statement about one noise level:
# (11.4) is the score of the tilted $p(x_t)\,p(y \mid x_t)^s$ at every $t$, but the chain run
# with it does *not* in general sample $p(x_0)\,p(y \mid x_0)^s$, because the tilt of each
# noised $p(x_t)$ is not the noised tilt of $p(x_0)$ (measured below).  Only $s = 0$ and
# $s = 1$ sample exactly what they say.
#
# A toy where every score is known: $x_0 \sim \tfrac12\mathcal N(-1, 0.6^2)
# + \tfrac12\mathcal N(1, 0.6^2)$ in one dimension, $y$ = "came from the first component", so
# $p(x_t \mid y)$ is that component.  Both $\epsilon$'s are exact (`diffusion/oracles.py`);
# we feed them to the library's `guided` (one doubled batch, the cond half flagged) and compare
# with the score of $p(x_t)\,p(y \mid x_t)^s$, written out as a log-density and differentiated
# by central differences.  The check is a function (`check_guidance`), so that a test can plant
# a wrong `guided` (Ho & Salimans' $w$ read as our $s$; the halves swapped) and see it fail.

# %%
schedule = NoiseSchedule.linear(1000)
abar = host(schedule.alphas_cumprod)
means, std = np.array([[-1.0], [1.0]]), 0.6
mixture, component = GaussianMixture(means, [std, std]), GaussianMixture(means[:1], [std])


def toy_eps(x_t, t, cond):
    """eps(x_t, t, cond): the component's exact eps where cond["y"] is 1, the mixture's else."""
    y = backend.array_of(cond["y"]).reshape(-1, 1) > 0
    return Tensor(backend.xp().where(y, component.eps(schedule, x_t, t),
                                     mixture.eps(schedule, x_t, t)))


def guided_eps(s, n):
    """(11.4) on the toy, through the library's ``guided``: y = 1 against the empty y = 0."""
    return guided(toy_eps, {"y": backend.xp().ones(n)},
                               {"y": backend.xp().zeros(n)}, s)


def log_tilted(x, t, s):
    """log p(x_t) + s log p(y | x_t), p(y | x_t) = w_0 N_0(x_t) / p(x_t), by hand."""
    a = abar[t]
    var = a * std ** 2 + 1 - a
    log_n = -0.5 * (x[:, None] - math.sqrt(a) * means[:, 0]) ** 2 / var \
        - 0.5 * math.log(2 * math.pi * var) + math.log(0.5)
    log_p = np.logaddexp(log_n[:, 0], log_n[:, 1])
    return log_p + s * (log_n[:, 0] - log_p)


def check_guidance(ts=(0, 100, 500, 900), scales=(0.0, 1.0, 3.0, 7.5), h_fd=1e-5):
    """(11.4) = (11.7): guided's eps == -sqrt(1 - abar_t) grad log [p(x_t) p(y|x_t)^s], the
    gradient by central differences of the log-density written by hand."""
    x_check = np.random.default_rng(11).standard_normal(64) * 1.5
    for t in ts:
        for s in scales:
            score = (log_tilted(x_check + h_fd, t, s)
                     - log_tilted(x_check - h_fd, t, s)) / (2 * h_fd)
            eps = host(guided_eps(s, 64)(backend.to_device(x_check[:, None]),
                                         backend.xp().full(64, t)))[:, 0]
            np.testing.assert_allclose(eps, -math.sqrt(1 - abar[t]) * score, rtol=1e-6,
                                       atol=1e-7, err_msg=f"t = {t}, s = {s}")


check_guidance()
print("(11.4) = (11.7): guided(eps_u, eps_c, s) == -sqrt(1 - abar_t) grad log "
      "[p(x_t) p(y|x_t)^s] (finite differences), t in 0, 100, 500, 900, s in 0, 1, 3, 7.5")

# %% [markdown]
# Sampling with the guided $\epsilon$: the fraction of each sample's probability that the
# implicit classifier $p(y \mid x_0)$ gives to $y$, and the spread, against $s$.  $s = 0$ must
# reproduce the mixture and $s = 1$ the component (we compare with direct draws from each);
# larger $s$ pushes the samples away from the other component, where the classifier is sure,
# and narrows them.  The dashed curves are $p(x_0)\,p(y \mid x_0)^s$, which for $s$ other
# than 0 and 1 the guided chain does not sample exactly (above): the histograms show by how
# much.

# %%
n_toy = 1000 if QUICK else 4000
toy_steps = 100     # DDIM with eta 0 (the ODE); eta 1 at 50 steps narrows even the s = 0 samples
scales = (0.0, 1.0, 3.0, 10.0)


def classifier_y(x0):
    """p(y | x_0) of the clean mixture."""
    return np.exp(log_tilted(x0, 0, 1.0) - log_tilted(x0, 0, 0.0))


toy = {}
for s in scales:
    backend.manual_seed(1)
    x0 = host(ddim_sample(guided_eps(s, n_toy), schedule, (n_toy, 1), steps=toy_steps, eta=0.0,
                          clip_x0=False))[:, 0]
    toy[s] = x0
    show(f"s = {s:4}: mean p(y|x_0), mean, std of x_0", f"{classifier_y(x0).mean():.3f}, "
         f"{x0.mean():+.3f}, {x0.std():.3f}")
direct_mixture, _ = mixture.sample(n_toy)
direct_component, _ = component.sample(n_toy)
tolerance = 2.5 / math.sqrt(n_toy) + 0.01      # ~4 standard errors of the difference
for s, direct in ((0.0, direct_mixture), (1.0, direct_component)):
    direct_confidence = classifier_y(host(direct)[:, 0]).mean()
    show(f"s = {s:g}: direct draws' mean p(y|x_0)", f"{direct_confidence:.3f}")
    assert abs(classifier_y(toy[s]).mean() - direct_confidence) < tolerance, s
confidence = [classifier_y(toy[s]).mean() for s in scales]
assert all(b > a for a, b in zip(confidence, confidence[1:])) and confidence[-1] > 0.99
assert toy[10.0].std() < toy[1.0].std()
print("s = 0 samples the mixture, s = 1 the component (against direct draws); the implicit "
      "classifier's confidence grows with s, the spread shrinks")

plt = pyplot()
if plt is not None:
    fig, axes = plt.subplots(1, len(scales), figsize=(12, 2.8), sharey=True)
    grid = np.linspace(-3.5, 3.5, 400)
    for ax, s in zip(axes, scales):
        ax.hist(toy[s], bins=60, range=(-3.5, 3.5), density=True, alpha=0.6)
        target = np.exp(log_tilted(grid, 0, s))
        ax.plot(grid, target / (target.sum() * (grid[1] - grid[0])), "k--", lw=1)
        ax.set_title(f"s = {s:g}")
        ax.set_xlabel("x_0")
    fig.suptitle("guided DDIM on the toy (histogram) and p(x) p(y|x)^s (dashed)")
    fig.tight_layout()
    fig.savefig(out_dir / "11_guidance_toy.png", dpi=100)
    plt.close(fig)
    print(f"saved {out_dir / '11_guidance_toy.png'}")

# %% [markdown]
# ### The guidance sweep on the text-to-image model
#
# The shipped txt2img model (latent, cross-attention in its middle block, trained with caption
# dropout 0.1) sampled with $s$ in 0, 1, 2, 3, 5: for each digit word "zero" .. "nine" a few
# samples, and two measures (`minidiff.evaluate.prompts`, what `minidiff eval --prompts`
# reports): the prompted accuracy, the fraction the project's classifier labels as the
# prompted digit, and the diversity, the mean pairwise distance of the classifier's features
# between samples of the same prompt.  $s = 0$ ignores the prompt (chance: about 0.1); larger
# $s$ trades diversity for adherence, as on the toy.  The figure: one row per $s$, the same
# seeds.

# %%
backend.set_default_dtype("float32")          # the models' dtype from here on

STAND_IN = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
            "attention_resolutions": [14], "T": 10, "batch_size": 4, "steps": 2,
            "warmup_steps": 1, "train_images": 8, "log_every": 0, "sample_every": 0,
            "checkpoint_every": 0, "diag_every": 0, "sample_steps": 2, "ema_decay": 0.5,
            "context_dim": 8, "text_heads": 2, "text_layers": 1}
stand_in_dir = tempfile.TemporaryDirectory()


def model_path(name, kind):
    """data/checkpoints/<name>; in --quick a tiny 28x28 pixel model of conditioning ``kind``
    trained for two steps on eight digits; None (said so) when a model is not shipped."""
    if not QUICK:
        path = shipped(name)
        print(f"{name}: " + ("the shipped model" if path is not None else
                             "ABSENT (not shipped yet): its part is left out, not measured"))
        return path
    run = f"{stand_in_dir.name}/{kind}"
    config = resolve("quick", overrides={**STAND_IN, "conditioning": kind})
    Trainer(config, run, images=train_images[:8], labels=train_labels[:8],
            log=lambda _: None).run()
    print(f"{name}: --quick: a tiny stand-in ({kind}, pixels, two training steps): its "
          "numbers show the code, not the quality")
    return f"{run}/ema.npz"


SCALES = (0.0, 1.0, 2.0, 3.0, 5.0)
PER_PROMPT = 2 if QUICK else 20               # samples per digit word and s
STEPS = 3 if QUICK else 50                    # DDIM


def guidance_sweep(txt2img):
    """Prompted accuracy and diversity for each s in SCALES, the rows figure and the curve."""
    sweep = {}
    for s in SCALES:
        r = prompted_accuracy(txt2img, per_prompt=PER_PROMPT, guidance=s, steps=STEPS, fid=False)
        sweep[s] = r
        assert len(r["per_digit"]) == 10 and 0 <= r["accuracy"] <= 1 and r["diversity"] >= 0
        show(f"s = {s:g}: prompted accuracy (n = {r['n']}), diversity",
             f"{r['accuracy']:.3f}, {r['diversity']:.3f}   ({r['seconds']:.0f} s)")
    if not QUICK:                             # what guidance must do on a trained model
        assert sweep[3.0]["accuracy"] > sweep[0.0]["accuracy"] + 0.3
        assert sweep[1.0]["accuracy"] > sweep[0.0]["accuracy"]
        assert sweep[5.0]["diversity"] < sweep[0.0]["diversity"]
        print("(11.4) on the trained model: s = 3 beats s = 0 by more than 30 points of "
              "accuracy; diversity at s = 5 is below s = 0")
    rows = [prompt_samples(txt2img, digit_prompts(), per_prompt=1, guidance=s, steps=STEPS,
                           seed=0) for s in SCALES]
    save_grid(np.concatenate(rows)[:, None], out_dir / "11_guidance_rows.png", nrow=10,
              labels=[f"s = {s:g}" for s in SCALES])
    print(f"saved {out_dir / '11_guidance_rows.png'} (zero .. nine, one row per s, same seeds)")
    if plt is not None:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        ax.plot(SCALES, [sweep[s]["accuracy"] for s in SCALES], "o-", label="prompted accuracy")
        ax.set_xlabel("guidance scale s")
        ax.set_ylabel("prompted accuracy")
        ax2 = ax.twinx()
        ax2.plot(SCALES, [sweep[s]["diversity"] for s in SCALES], "s--", color="C1",
                 label="diversity")
        ax2.set_ylabel("diversity (mean feature distance)")
        fig.legend(loc="lower center", ncol=2, fontsize=8)
        ax.set_title(f"(11.4) sweep, {10 * PER_PROMPT} samples per s"
                     + (" (stand-in)" if QUICK else ""))
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        fig.savefig(out_dir / "11_guidance.png", dpi=100)
        plt.close(fig)
        print(f"saved {out_dir / '11_guidance.png'}")
    return sweep


txt2img_path = model_path("txt2img.npz", "crossattn")
txt2img = load_pipeline(txt2img_path) if txt2img_path is not None else None
if txt2img is not None:
    sweep = guidance_sweep(txt2img)

# %% [markdown]
# Where does each word look?  The weights of (11.3), softmax$(QK^\top/\sqrt{d_h})$, say for
# every position of the feature map how much of each token it reads.  We noise a test digit
# to the middle of the chain, run the model once with a caption, record what enters the first
# cross-attention layer (its queries' input $\varphi$, the caption's $\tau_\theta(y)$ and the
# padding mask), and compute the weights by hand from the layer's own projections, averaged
# over the heads: one map per token, over the digit.  Column 0 is the start token every
# caption begins with; padded positions are not shown (their weight is 0).  With `--quick`
# the stand-in is untrained and its maps show the code, not what a trained model learnt.

# %%


def attention_weights(attention, phi, tau, keep):
    """softmax(Q K^T / sqrt(d_h)) of (11.3) with ``attention``'s weights, (N, heads, HW, L)."""
    (wq, bq), (wk, bk) = weights_of(attention.q_proj), weights_of(attention.k_proj)
    heads = attention.num_heads
    split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, -1).transpose(0, 2, 1, 3)
    q, k = split(phi @ wq.T + bq), split(tau @ wk.T + bk)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    scores = np.where(keep.reshape(len(keep), 1, 1, -1), scores, -np.inf)
    a = np.exp(scores - scores.max(-1, keepdims=True))
    return a / a.sum(-1, keepdims=True)


def cross_attention_maps(checkpoint, image, caption, t_index):
    """(name, maps (L, h, w), keep (L,)) of the model's first cross-attention layer for
    ``image`` (1, 28, 28) in [-1, 1] noised to ``t_index``, captioned ``caption``."""
    layers = [(name, m.cross_attention) for name, m in checkpoint.model.named_modules()
              if isinstance(m, SpatialTransformer)]
    name, layer = layers[0]
    seen = {}

    def recording(x, context=None, mask=None):
        seen.update(phi=host(x), tau=host(context), keep=host(mask))
        return type(layer).forward(layer, x, context, mask)
    layer.forward = recording                     # this instance only, removed below
    try:
        cond, _ = checkpoint.cond(1, prompts=[caption])
        z0 = checkpoint.space.encode(backend.to_device(image[None]), draw=False)
        t = backend.xp().full((1,), t_index, dtype=backend.xp().int64)
        zt = q_sample(checkpoint.schedule, z0, t, backend.randn(*z0.shape, dtype=z0.dtype))
        with no_grad():
            checkpoint.model(Tensor(zt), t, cond)
    finally:
        del layer.forward
    a = attention_weights(layer, seen["phi"], seen["tau"], seen["keep"])[0].mean(0)  # (HW, L)
    side = int(round(math.sqrt(a.shape[0])))
    return name, a.T.reshape(-1, side, side), seen["keep"].reshape(-1).astype(bool)


if txt2img is not None:
    caption = "a thick seven"
    digit = to_unit_range(test_images[test_labels == 7][:1])[0]
    backend.manual_seed(5)
    layer_name, maps, kept = cross_attention_maps(txt2img, host(digit),
                                                  caption, txt2img.schedule.num_timesteps // 2)
    words = ["<start>"] + caption.split()
    np.testing.assert_allclose(maps[kept].sum(0), 1.0, rtol=1e-6)     # each position: sums to 1
    assert kept.sum() == len(words) and np.all(maps[~kept] == 0)
    show(f"cross-attention of '{caption}' in {layer_name}",
         f"{maps.shape[1]}x{maps.shape[2]} maps; share of each token: " + ", ".join(
             f"{w} {maps[i].mean():.2f}" for i, w in enumerate(words)))
    if plt is not None:
        fig, axes = plt.subplots(1, 1 + len(words), figsize=(2.2 * (1 + len(words)), 2.6))
        axes[0].imshow(host(digit)[0], cmap="gray", vmin=-1, vmax=1)
        axes[0].set_title("the digit (x_0)", fontsize=9)
        for ax, i, word in zip(axes[1:], range(len(words)), words):
            ax.imshow(host(digit)[0], cmap="gray", vmin=-1, vmax=1, extent=(0, 28, 28, 0))
            ax.imshow(maps[i], cmap="magma", alpha=0.65, extent=(0, 28, 28, 0),
                      vmin=0, vmax=maps[kept].max())
            ax.set_title(f"'{word}'", fontsize=9)
        for ax in axes:
            ax.axis("off")
        fig.suptitle(f"(11.3) cross-attention weights per token, at t = T/2, {layer_name}"
                     + (" (untrained stand-in)" if QUICK else ""), fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / "11_cross_attention.png", dpi=100)
        plt.close(fig)
        print(f"saved {out_dir / '11_cross_attention.png'}")

# %% [markdown]
# Do the attribute words reach the image?  Prompted "a thick D" / "a thin D" and "a slanted D"
# / "an upright D" for every digit at the model's default s, the samples are measured with
# section 1's (11.1) and (11.2): the two groups' means, the fraction of same-digit (high, low)
# pairs ordered right (the AUC: 1 = always, 0.5 = chance) and the fraction of each group that
# falls in its own third of the training set.

# %%
if txt2img is not None:
    adherence = attribute_adherence(txt2img, digits=(0, 1) if QUICK else range(10),
                                    per_prompt=1 if QUICK else 5, steps=STEPS)
    for attribute in ("thickness", "slant"):
        a = adherence[attribute]
        assert 0 <= a["auc"] <= 1 and a["n"] == len(adherence["digits"]) * adherence["per_prompt"]
        show(f"{a['high']} / {a['low']} ({a['n']} samples each)",
             f"means {a['mean_high']:.3f} / {a['mean_low']:.3f}, AUC {a['auc']:.3f}, in their "
             f"thirds {a['in_tertile_high']:.0%} / {a['in_tertile_low']:.0%}")
        if not QUICK:
            assert a["mean_high"] > a["mean_low"] and a["auc"] > 0.75, attribute
    print(f"at s = {adherence['guidance']:g} ({adherence['seconds']:.0f} s)"
          + (", stand-in: no claim" if QUICK else ""))

# %% [markdown]
# ## 5. Spatial inputs: concatenation against replacement
#
# A condition aligned with the image (a mask, a semantic map, a low-resolution image) needs no
# attention: it is concatenated to $z_t$ as extra channels.  For inpainting (Stable Diffusion's
# way) with the mask $m$ (1 = to fill) on the latent grid and the masked image (every pixel to
# fill set to 0) encoded,
#
# $$ \epsilon_\theta\big([z_t,\ m,\ E((1 - m) \odot x)],\ t\big) \tag{11.9} $$
#
# and the model is trained on random masks, so it learns to complete.  The alternative needs no
# training (RePaint without resampling, Lugmayr et al. 2022): an unconditional model, and at
# every reverse step the known part of the state replaced by the forward-noised original,
#
# $$ x_s \leftarrow m \odot x_s + (1 - m) \odot \big(\sqrt{\bar\alpha_s}\,x_0^\text{known}
#    + \sqrt{1-\bar\alpha_s}\,\epsilon'\big). \tag{11.8} $$
#
# First: (11.9) hides everything under the mask -- changing the hidden pixels changes nothing
# the network sees (in the inpainting model's space; in pixels if it is absent).

# %%
inpaint_path = model_path("inpaint.npz", "hybrid")
space = load_pipeline(inpaint_path).space if inpaint_path is not None else PixelSpace()
bottom = backend.to_device(host(named_mask("bottom")).astype(np.float32))[None, None]
digits = to_unit_range(test_images[:4])
flipped = host(digits).copy()
flipped[:, :, 14:] = -flipped[:, :, 14:]                  # every hidden pixel changed
seen = host(concat_input(space, digits, bottom.repeat(4, 0)))
seen_flipped = host(concat_input(space, backend.to_device(flipped),
                                              bottom.repeat(4, 0)))
np.testing.assert_array_equal(seen, seen_flipped)
assert not np.array_equal(seen, host(concat_input(
    space, to_unit_range(test_images[4:8]), bottom.repeat(4, 0))))
print(f"(11.9) the concat input {seen.shape} ({space.describe()}): identical when every "
      "hidden pixel changes, different for other digits")

# %% [markdown]
# The measure (`evaluate/inpainting.py`): the first n test digits with the bottom half hidden,
# one completion each, and the fraction the classifier gives its true label; two bounds from
# the same digits, the masked input alone (bottom black) and the originals.  The measurement
# on 500 digits is in `data/checkpoints/inpaint.md`; here a smaller n.  Replacement runs on the
# unconditional latent model ldm.npz, concat on inpaint.npz.

# %%
replace_path = model_path("ldm.npz", "none")
N_INPAINT = 4 if QUICK else 100
methods = [(label, path, label) for label, path in (("concat", inpaint_path),
                                                    ("replace", replace_path))
           if path is not None]
results = {}
for label, checkpoint, method in methods:
    r = inpainting_accuracy(checkpoint, n=N_INPAINT, method=method, steps=STEPS)
    results[label] = r
    assert 0 <= r["accuracy"] <= 1 and r["n"] == N_INPAINT
    show(f"{label}: completed digits labelled right (n = {r['n']})",
         f"{r['accuracy']:.1%}   (masked input {r['masked_accuracy']:.1%}, originals "
         f"{r['original_accuracy']:.1%}; {r['seconds']:.0f} s)")
if not QUICK and len(results) == 2:           # what training for it must buy
    assert results["concat"]["accuracy"] > results["replace"]["accuracy"]
    assert results["concat"]["accuracy"] > results["concat"]["masked_accuracy"]
    print("concat-trained inpainting beats replacement, and beats the masked input alone")
if methods:
    compare_figure(methods, list(range(6)), out_dir / "11_inpainting.png",
                   n=2 if QUICK else 4, steps=STEPS)
    print(f"saved {out_dir / '11_inpainting.png'} (per digit: original, masked input, "
          "completions; a row per method)")

# %% [markdown]
# ### Guidance over the known part
#
# Bayes' rule of section 4 does not care what the condition is.  With $y$ the known part and
# "nothing known" the all-covering mask ($m = 1$, $E(0)$; a quarter of the training masks), the
# same step gives guidance over the image,
#
# $$ \tilde\epsilon = \epsilon_\theta\big([z_t, 1, E(0)], t\big) + s\,\Big(\epsilon_\theta\big([z_t, m,
#    E((1 - m) \odot x)], t\big) - \epsilon_\theta\big([z_t, 1, E(0)], t\big)\Big), \tag{11.10} $$
#
# which for $s > 1$ samples from $p(z \mid y)\,p(y \mid z)^{s-1}$: completions the known half
# makes likelier than a faithful draw would (`minidiff inpaint --image-guidance S`).  Why lean
# at all: on the bottom-half mask many tops fit two digits (a 7 and a 9, a 3 and a 5), and even
# a perfect sampler of $p(\text{bottom} \mid \text{top})$ keeps the label only as often as
# $E[p(\text{label} \mid \text{top})]$, about 82-87% by the labels of each top's nearest
# training tops (`data/checkpoints/inpaint.md`); leaning towards the likeliest completion can
# do better than that.  On the shipped model, 500 digits: 83.4% at $s = 1$, 86.2% at $s = 2$,
# which is why `inpaint-quick` completes at $s = 2$ by default (config `image_guidance`).
# The check: (11.10) computed by the library against its two terms computed one at a time.

# %%
def check_image_guidance(path, scales=(2.0, 3.0)):
    """(11.10): the library's image-guided eps == eps_u + s (eps_c - eps_u), its two terms
    computed apart by the unguided model (eps_u: given the all-covering mask), on two test
    digits with the bottom half hidden.  Returns max |eps_c - eps_u|."""
    plain_for, inpaint_schedule, inpaint_space, _, _ = load_inpainter(path, image_guidance=1.0)
    x_known = to_unit_range(load_mnist("test")[0][:2])
    m_bottom = backend.xp().broadcast_to(
        backend.to_device(host(named_mask("bottom")).astype(np.float32)), x_known.shape)
    backend.manual_seed(5)
    x_t = backend.randn(2, *inpaint_space.shape)
    t_now = backend.to_device(np.array([inpaint_schedule.T // 10, 7 * inpaint_schedule.T // 10]))
    with no_grad():
        eps_c = host(plain_for(x_known, m_bottom)(x_t, t_now).data)
        eps_u = host(plain_for(x_known, backend.xp().ones_like(m_bottom))(x_t, t_now).data)
        for s in scales:
            eps_s = host(load_inpainter(path, image_guidance=s)[0](x_known, m_bottom)(
                x_t, t_now).data)
            gap = np.abs(eps_s - (eps_u + s * (eps_c - eps_u))).max()
            assert gap < 1e-4 * max(1.0, np.abs(eps_s).max()), (s, gap)
    return float(np.abs(eps_c - eps_u).max())


if inpaint_path is not None:
    apart = check_image_guidance(inpaint_path)
    print(f"(11.10) image guidance at s = 2, 3 == eps_u + s (eps_c - eps_u), its two terms "
          f"computed apart (they differ by up to {apart:.3f})")
stand_in_dir.cleanup()

# %% [markdown]
# ## Summary
#
# * Captions are made from the label and two attributes measured on the pixels: thickness by
#   erosion depth (11.1), slant from second moments (11.2), each cut into thirds.
# * Text reaches the U-Net through cross-attention (11.3): queries from the image features,
#   keys and values from $\tau_\theta(y)$, padding masked; the SpatialTransformer around it
#   starts as the identity.  $\tau_\theta$ is a small transformer trained with the U-Net.
# * The switch is one config key; concatenation adds input channels, cross-attention a context.
# * Classifier-free guidance (11.4) is Bayes' rule (11.5)-(11.7) with the implicit classifier
#   $p(y \mid x) \propto p(x \mid y) / p(x)$; $s$ ($= 1 + w$ of Ho & Salimans) trades
#   diversity for adherence.
# * A model trained with the mask concatenated (11.9) completes digits; replacement (11.8) on
#   an unconditional model only sees the known part through the noisy state.  Guidance over
#   the known part (11.10) leans a completion towards the likeliest digit.

# %%
print("lesson 11: all checks passed")
