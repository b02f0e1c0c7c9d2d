# %% [markdown]
# # Lesson 12 — Pixel against latent diffusion: the two architectures, measured
#
# Section 14 of the article sets the overall architecture of a plain diffusion model (DM)
# beside that of Stable Diffusion, a latent diffusion model (LDM), in two pictures, and its
# section 15 sums up: the LDM runs the same diffusion in the autoencoder's latent space, so
# it is much faster.  This chapter draws the two pipelines again, labelled with the
# minidiff modules that implement each box, then puts numbers on "much faster": what each
# model costs to train and to sample, with and without conditioning, on the configurations
# minidiff ships, and what the latent space costs in quality.
#
# $$
# \begin{aligned}
# &\text{DM:} && x_0 \to q(x_t \mid x_0) \to \epsilon_\theta(x_t, t) \text{ on } 1\times28\times28
#    \to \text{sampler} \to x_0\\
# &\text{LDM:} && x \to E \to z_0 = s\,E(x)\ (4\times7\times7) \to \text{the same diffusion on } z
#    \to D(z_0 / s) \to x
# \end{aligned}
# $$
#
# Sections:
#
# 1. The two pipelines, drawn (the article's two figures; the LDM paper's Figure 3)
# 2. What each is made of: parameters, counted from the configs by hand (12.1)
# 3. Why a step is cheaper: the cost of a layer scales with the grid it runs on (12.2)-(12.3)
# 4. The cost table: training and sampling per image, memory, pixel / latent (12.4)
# 5. What the autoencoder costs once: encoding the training set, decoding each sample (12.5)
# 6. Where the quality goes: FID, classifier confidence, the autoencoder's rFID
#
#     python lessons/12_architectures.py            # the presets' sizes (minutes)
#     python lessons/12_architectures.py --quick    # tiny stand-ins, seconds (the tests)
#     python lessons/12_architectures.py --out DIR  # where the figures go

# %%
import importlib.util
import json
import pathlib
import re
import statistics

from _lesson import lesson_parser, pyplot, show, start  # finds minidiff; --quick, --out
from minidiff import backend
from minidiff.bench.ldm import CONTEXT_LENGTH, Side, config_memory, time_sides
from minidiff.bench import timed
from minidiff.models import UNet
from minidiff.models.autoencoder import AutoencoderKL
from minidiff.models import blocks as unet_blocks
from minidiff.models.blocks import AttentionBlock, ResBlock
from minidiff.nn import MultiheadAttention
from minidiff.data.paths import find, resolve_user_path
from minidiff.data.spaces import LatentSpace, PixelSpace
from minidiff.tensor import Tensor, no_grad
from minidiff.config.build import autoencoder_config
from minidiff.config.presets import resolve

np = backend.host  # NumPy, for host-side numbers in this lesson

parser = lesson_parser("Lesson 12: pixel against latent diffusion",
                       "tiny stand-ins instead of the presets' sizes (seconds)")
parser.add_argument("--figures", default="data/checkpoints/figures.json",
                    help="the quality record of the shipped models")
args, out_dir = start(parser, dtype="float32")
xp = backend.xp()

# %% [markdown]
# ## 1. The two pipelines
#
# A DM works on the image itself.  Training draws $t$ and $\epsilon$, noises $x_0$ in one step
# with the closed form $q(x_t \mid x_0)$ (lesson 02) and teaches the U-Net $\epsilon_\theta(x_t, t)$
# to find the noise; sampling runs the U-Net $S$ times, from $x_T \sim \mathcal N(0, I)$ down to
# $x_0$ (lesson 08).
#
# An LDM wraps the same loop in an autoencoder (lessons 09-10).  $E$ maps $x$ to a
# $4\times7\times7$ latent, multiplied by the scale factor $s$ so that it has unit variance; the
# diffusion process, forward and reverse, runs on $z$; $D$ turns the final $z_0 / s$ back into
# pixels, once per sample.  Conditioning enters through a switch (the right of the LDM paper's Figure 3):
# a prompt $y$ goes through a text encoder $\tau_\theta$, whose token embeddings become the keys
# and values of cross-attention layers inside the U-Net (the queries come from its feature
# map); a spatially aligned input (a mask and the masked image, for inpainting) is encoded
# to the latent grid and concatenated to $z_t$ as extra input channels.
#
# Each box below carries the name of the minidiff module that implements it.

# %%
BOX_W, BOX_H = 1.9, 0.9
DM_BOXES = [  # (x, y, text, colour): x_0 -> q -> U-Net -> sampler -> x_0
    (1.1, 1.8, "x_0\n1x28x28 digit\ndata.py", "#dde8f5"),
    (3.6, 1.8, "q(x_t | x_0)\nforward process\ndiffusion/forward.py", "#f2f2f2"),
    (6.1, 1.8, "U-Net eps_theta(x_t, t)\non 1x28x28 pixels\nmodels/unet.py", "#fde7c8"),
    (8.6, 1.8, "sampler (DDPM / DDIM)\nx_T -> x_0, S steps\ndiffusion/samplers.py",
     "#f2f2f2"),
    (11.1, 1.8, "x_0\nsampled digit\npipelines/sample.py", "#dde8f5"),
]
LDM_BOXES = [  # (x, y, text, colour, width)
    (1.1, 4.6, "x\n1x28x28 digit", "#dde8f5", BOX_W),
    (3.45, 4.6, "encoder E\nmodels/autoencoder.py", "#d9f0d9", BOX_W),
    (6.0, 4.6, "z_0 = s E(x)\n4x7x7, scale factor s\ndata/spaces.py LatentSpace", "#e8dcf2", BOX_W),
    (8.9, 4.6, "q(z_t | z_0)\nforward process\ndiffusion/forward.py", "#f2f2f2", BOX_W),
    (8.9, 2.6, "U-Net eps_theta(z_t, t, tau_theta(y))\non 4x7x7 latents, models/unet.py\n"
               "ResBlocks + attention blocks:\nQ from z_t; K, V from tau_theta(y)", "#fde7c8",
     3.2),
    (5.75, 2.6, "sampler, S steps\nz_T -> z_0\ndiffusion/samplers.py", "#f2f2f2", BOX_W),
    (3.45, 0.8, "decoder D(z_0 / s)\nonce per sample\nmodels/autoencoder.py", "#d9f0d9",
     BOX_W),
    (1.1, 0.8, "x\nsampled digit", "#dde8f5", BOX_W),
    (12.15, 2.6, "switch\nmodels/conditioned.py\nnone | crossattn |\nconcat | hybrid", "#f7d4d4",
     BOX_W),
    (14.9, 4.6, "prompt y\n\"a thick seven\"\n(tokenized)", "#dde8f5", BOX_W),
    (14.9, 2.95, "text encoder tau_theta\nmodels/text_encoder.py", "#f7d4d4", BOX_W),
    (14.9, 1.0, "mask, E(masked image)\n(inpainting)", "#dde8f5", BOX_W),
]


def draw_box(ax, x, y, text, colour, width=BOX_W, height=BOX_H):
    from matplotlib.patches import FancyBboxPatch  # noqa: PLC0415
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0.04", facecolor=colour, edgecolor="k",
                                lw=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=7.5)


def draw_arrow(ax, start, end, label="", colour="k", rad=0.0, offset=(0.0, 0.1)):
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.2,
                                connectionstyle=f"arc3,rad={rad}"))
    if label:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1],
                label, ha="center", va="bottom", fontsize=7, color=colour,
                bbox=dict(facecolor="white", edgecolor="none", pad=0.4, alpha=0.85))


def draw_panel(ax, x0, x1, y0, y1, title, colour):
    from matplotlib.patches import Rectangle  # noqa: PLC0415
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=colour, edgecolor="#999",
                           lw=0.8))
    ax.text(x0 + 0.1, y1 - 0.08, title, fontsize=8, va="top", color="#555")


plt = pyplot()   # None without matplotlib: the figures are then skipped
diagrams = [out_dir / "12_dm_pipeline.png", out_dir / "12_ldm_pipeline.png"]
if plt is not None:
    fig, ax = plt.subplots(figsize=(12.5, 3.4))
    draw_panel(ax, 0.0, 12.2, 0.25, 3.05, "pixel space: data/spaces.py PixelSpace (x_0 is the "
               "image itself, 784 numbers)", "#fbf7ee")
    for x, y, text, colour in DM_BOXES:
        draw_box(ax, x, y, text, colour)
    for (xa, ya, _, _), (xb, yb, _, _) in zip(DM_BOXES, DM_BOXES[1:]):
        draw_arrow(ax, (xa + BOX_W / 2 + 0.05, ya), (xb - BOX_W / 2 - 0.05, yb))
    draw_arrow(ax, (8.6, 2.3), (6.1, 2.3), "x_t -> x_(t-1): one U-Net call per step", rad=0.3,
               offset=(0.0, 0.42))
    ax.text(6.1, 0.55, "training (Algorithm 1, diffusion/training.py): draw t, eps; x_t from "
            "q(x_t | x_0); minimise || eps - eps_theta(x_t, t) ||^2", ha="center", fontsize=7.5)
    ax.set(xlim=(-0.1, 12.3), ylim=(0.2, 3.4),
           title="Diffusion model (DM): the whole process on 1x28x28 pixels")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(diagrams[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(15, 5.8))
    draw_panel(ax, 0.0, 4.55, 0.1, 5.35, "pixel space", "#fbf7ee")
    draw_panel(ax, 4.65, 10.65, 0.1, 5.35, "latent space, 4x7x7 = 196 numbers "
               "(data/spaces.py LatentSpace)", "#f3eefa")
    draw_panel(ax, 10.75, 16.0, 0.1, 5.35, "conditioning (models/conditioned.py)", "#fcf0f0")
    for x, y, text, colour, width in LDM_BOXES:
        draw_box(ax, x, y, text, colour, width)
    half = BOX_W / 2 + 0.04
    draw_arrow(ax, (1.1 + half, 4.6), (3.45 - half, 4.6))
    draw_arrow(ax, (3.45 + half, 4.6), (6.0 - half, 4.6), "times s")
    draw_arrow(ax, (6.0 + half, 4.6), (8.9 - half, 4.6), "diffusion")
    draw_arrow(ax, (8.9, 4.6 - BOX_H / 2 - 0.04), (8.9, 2.6 + BOX_H / 2 + 0.04),
               "z_t, t (training)", offset=(0.75, -0.05))
    draw_arrow(ax, (8.9 - 1.64, 2.6), (5.75 + half, 2.6), "eps_theta", offset=(0.0, 0.05))
    draw_arrow(ax, (5.75, 2.6 + BOX_H / 2 + 0.04), (7.9, 2.6 + BOX_H / 2 + 0.04),
               "z_t, S steps", rad=-0.45, offset=(0.0, 0.35))
    draw_arrow(ax, (5.2, 2.6 - BOX_H / 2 - 0.04), (3.45 + 0.4, 0.8 + BOX_H / 2 + 0.04),
               "z_0", offset=(0.2, 0.0))
    draw_arrow(ax, (3.45 - half, 0.8), (1.1 + half, 0.8))
    draw_arrow(ax, (14.9, 4.6 - BOX_H / 2 - 0.04), (14.9, 2.95 + BOX_H / 2 + 0.04), "tokens",
               offset=(0.35, -0.05))
    draw_arrow(ax, (14.9 - half, 2.95), (12.15 + half, 2.85), "tau_theta(y)",
               offset=(0.0, 0.03))
    draw_arrow(ax, (14.9 - half, 1.0), (12.15 + 0.3, 2.6 - BOX_H / 2 - 0.04), "spatial input",
               offset=(0.3, -0.25))
    draw_arrow(ax, (12.15 - half, 2.85), (8.9 + 1.64, 2.85), "K, V: cross-attention",
               colour="#955", offset=(0.0, 0.05))
    draw_arrow(ax, (12.15 - half, 2.35), (8.9 + 1.64, 2.35), "concatenated to z_t",
               colour="#955", offset=(0.0, -0.3))
    ax.set(xlim=(-0.1, 16.1), ylim=(0.0, 5.45),
           title="Latent diffusion model (LDM, Stable Diffusion): the same diffusion between E "
                 "and D, with the conditioning switch (LDM paper, Figure 3)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(diagrams[1], dpi=110)
    plt.close(fig)
    for path in diagrams:
        print(f"diagram written to {path} ({path.stat().st_size:,} bytes)")
        assert path.exists() and path.stat().st_size > 5000, path

# %% [markdown]
# ## 2. What each pipeline is made of (12.1)
#
# The models compared are those minidiff trains: the pixel U-Net of the `quick` preset (on 2x2
# patches of the 28x28 image, lesson 06 (6.2): 24/48 channels at 14/7, one ResBlock per level,
# self-attention only in the middle, at 7x7) and the latent U-Net of `ldm-quick` (one level of
# 32 channels at 7x7, two ResBlocks, self-attention in the middle).  Each also comes
# conditioned, the two ways the switch allows.  Cross-attention to a context of L = 8 token
# embeddings of width 64: the U-Net built with `context_dim`, whose attention blocks then also
# cross-attend (lesson 11's SpatialTransformer), and, as `txt2img-quick` does to `ldm-quick`,
# with attention blocks after the ResBlocks at 7x7 as well as in the middle.  Concatenation:
# `concat_channels` extra input channels for a mask and the encoded masked image (2 in pixel
# space, 1 + 4 on the latent grid).  Where the tree has lesson 11's switch
# (`minidiff.models.conditioned`), the conditioned rows are its real models, text encoder
# tau_theta included: `txt2img-quick` (text) and `inpaint-quick` ("hybrid": text and
# inpainting), and `quick` conditioned in the same way; without it, the U-Net's hooks are fed
# fixed inputs (`bench.ldm.FixedInputs`: a random context in place of tau_theta(y), random
# extra channels).  With `--quick` the same shapes are built with 8 base channels.
#
# Every parameter is in a convolution, a linear layer or a normalisation, so the count
# follows from the config alone:
#
#     conv k x k, C_in -> C_out:   k^2 C_in C_out + C_out     GroupNorm(C), LayerNorm(C): 2 C
#     Linear(a -> b):              a b + b         attention MHA(C, kv): 2 Linear(C, C) (q, out)
#                                                                        + 2 Linear(kv, C) (k, v)
#     ResBlock(C_in -> C_out):     GN(C_in) + conv3(C_in, C_out) + Linear(4 C_base -> C_out)
#                                  + GN(C_out) + conv3(C_out, C_out) [+ conv1(C_in, C_out)]
#     AttentionBlock(C):           GN(C) + conv1(C, 3C) + conv1(C, C)
#     SpatialTransformer(C, D_ctx): GN(C) + conv1(C, C) + 3 LN(C) + MHA(C, C) + MHA(C, D_ctx)
#                                  + Linear(C, 4C) + Linear(4C, C) + conv1(C, C)
#     U-Net:  time MLP + conv_in(C_in + C_concat) + the blocks of each level, down and up
#             (the up path's ResBlocks also read the skip) + middle + GN + conv_out   (12.1)
#
# `parameters_by_hand` adds those terms up level by level; the check is that it matches the
# sizes of the arrays the U-Net actually holds (and lesson 06's 1,623,169 for the reference
# configuration).

# %%
CONTEXT_DIM = 16 if args.quick else 64
# lesson 11's U-Net cross-attends in SpatialTransformer blocks; before it, the hook was a
# MultiheadAttention inside each AttentionBlock (this lesson counts whichever the tree has)
SPATIAL_TRANSFORMER = hasattr(unet_blocks, "SpatialTransformer")
# lesson 11's switch (config.build, models.conditioned) builds the real conditional models, text encoder
# included; a tree without it times the U-Net's hooks fed fixed inputs instead
REAL_CONDITIONING = importlib.util.find_spec("minidiff.models.conditioned") is not None
KIND_NAMES = {"crossattn": "cross-attn", "hybrid": "hybrid", "concat": "concat"}
KINDS = (" + cross-attn", " + hybrid") if REAL_CONDITIONING else (" + cross-attn", " + concat")


def parameters_by_hand(c) -> int:
    """(12.1): the U-Net's parameter count from its config (a ``UNetConfig``), by formula."""
    conv = lambda cin, cout, k: k * k * cin * cout + cout       # noqa: E731
    linear = lambda a, b: a * b + b                              # noqa: E731
    emb = 4 * c.base_channels

    def res(cin, cout):
        return (2 * cin + conv(cin, cout, 3) + linear(emb, cout) + 2 * cout
                + conv(cout, cout, 3) + (conv(cin, cout, 1) if cin != cout else 0))

    def mha(ch, kv):       # q, k, v and output projections
        return 2 * linear(ch, ch) + 2 * linear(kv, ch)

    def attention(ch):
        if not c.context_dim:                  # GN, qkv 1x1, out 1x1
            return 2 * ch + conv(ch, 3 * ch, 1) + conv(ch, ch, 1)
        if SPATIAL_TRANSFORMER:                # GN, 1x1 in, 3 LN, self- and cross-attention,
            return (2 * ch + 2 * conv(ch, ch, 1) + 3 * 2 * ch + mha(ch, ch)   # MLP, 1x1 out
                    + mha(ch, c.context_dim) + linear(ch, 4 * ch) + linear(4 * ch, ch))
        return 2 * ch + conv(ch, 3 * ch, 1) + conv(ch, ch, 1) + mha(ch, c.context_dim)

    total = linear(c.time_embed_dim, emb) + linear(emb, emb)
    patch_area = c.patch_size ** 2        # p x p patches as channels (lesson 06)
    total += conv((c.in_channels + c.concat_channels) * patch_area, c.base_channels, 3)
    skips, ch, size = [c.base_channels], c.base_channels, c.image_size // c.patch_size
    for level, mult in enumerate(c.channel_mults):
        for _ in range(c.num_res_blocks):
            total += res(ch, mult * c.base_channels)
            ch = mult * c.base_channels
            total += attention(ch) if size in c.attention_resolutions else 0
            skips.append(ch)
        if level < len(c.channel_mults) - 1:
            total += conv(ch, ch, 3)
            skips.append(ch)
            size //= 2
    total += 2 * res(ch, ch) + attention(ch)
    for level, mult in reversed(list(enumerate(c.channel_mults))):
        for _ in range(c.num_res_blocks + 1):
            total += res(ch + skips.pop(), mult * c.base_channels)
            ch = mult * c.base_channels
            total += attention(ch) if size in c.attention_resolutions else 0
        if level > 0:
            total += conv(ch, ch, 3)
            size *= 2
    return total + 2 * ch + conv(ch, c.out_channels * patch_area, 3)


def preset(name: str, **overrides) -> dict:
    """The preset's config; with --quick its U-Net (and autoencoder) at 8 base channels."""
    tiny = {"base_channels": 8, **({"context_dim": CONTEXT_DIM} if REAL_CONDITIONING else {})}
    return resolve(name, overrides={**(tiny if args.quick else {}), **overrides})


autoencoder_shape = autoencoder_config(preset("ae-quick"))    # ae.npz's shape (or tiny)
autoencoder = AutoencoderKL(autoencoder_shape).eval()
spaces = {"pixel": PixelSpace(28, 1), "latent": LatentSpace(autoencoder, 1.0)}
S = 5 if args.quick else 50                     # DDIM steps per sample, section 4
batch, sample_batch, repeat = (2, 2, 2) if args.quick else (32, 16, 3)
variants = {}   # name: config and how to build it (keyword arguments of config_memory)
for space_name, preset_name in (("pixel", "quick"), ("latent", "ldm-quick")):
    config = preset(preset_name)
    variants[space_name] = (config, {})
    if REAL_CONDITIONING:   # lesson 11's models: the presets, and quick conditioned alike
        for kind, name in (("crossattn", "txt2img-quick"), ("hybrid", "inpaint-quick")):
            conditioned = preset(name) if space_name == "latent" else \
                preset(preset_name, conditioning=kind, attention_resolutions=[7])
            variants[f"{space_name} + {KIND_NAMES[kind]}"] = (conditioned, {"conditioned": True})
    else:                   # the U-Net's hooks, fed fixed inputs (no text encoder)
        # as txt2img-quick will condition ldm-quick: attention also after the 7x7 ResBlocks
        variants[f"{space_name} + cross-attn"] = ({**config, "attention_resolutions": [7]},
                                                  {"context_dim": CONTEXT_DIM})
        variants[f"{space_name} + concat"] = (config,
                                              {"concat_channels": 1 + config["in_channels"]})


def side_for(name: str, config: dict, how: dict) -> Side:
    space = spaces[name.split()[0]]
    if how.get("conditioned"):
        return Side.from_conditioned_config(config, space, batch, name)
    return Side.from_config(config, space, batch, name, how.get("context_dim"),
                            how.get("concat_channels", 0))


def unet_of(model) -> UNet:
    """The U-Net inside a stand-in wrapper or a ConditionedUNet."""
    while not isinstance(model, UNet):
        model = getattr(model, "unet", None) or model.model
    return model


sides = {name: side_for(name, config, how) for name, (config, how) in variants.items()}
unets = {name: unet_of(side.model) for name, side in sides.items()}
reference = UNet()
assert parameters_by_hand(reference.config) == reference.num_parameters() == 1_623_169
print(f"(12.1) reference U-Net (lesson 06): {reference.num_parameters():,} parameters, by "
      f"hand {parameters_by_hand(reference.config):,}")
print(f"{'model':22s} {'input':>9s} {'parameters':>11s} {'by hand (12.1)':>15s}")
for name, unet in unets.items():
    c = unet.config
    by_hand = parameters_by_hand(c)
    print(f"{name:22s} {c.in_channels}x{c.image_size}x{c.image_size:<3d} "
          f"{unet.num_parameters():11,d} {by_hand:15,d}")
    assert by_hand == unet.num_parameters(), name
for name, side in sides.items():
    if side.model.num_parameters() != unets[name].num_parameters():
        print(f"{name}: + text encoder tau_theta, "
              f"{side.model.num_parameters() - unets[name].num_parameters():,} parameters")
if not args.quick:   # the sizes the presets' comments quote (369k, 221k)
    assert unets["pixel"].num_parameters() == 369_196
    assert unets["latent"].num_parameters() == 220_772

# %% [markdown]
# The latent U-Net has three fifths of the pixel one's parameters, but parameters are not what
# sampling costs: a convolution's weights are reused at every position of its grid, so its
# work grows with the grid, not with its weight count.  That is the next section.
#
# The text encoder tau_theta (`models/text_encoder.py`) has parameters of its own, counted
# in the cost table below but not above (the U-Net alone); it reads 8 tokens, a small share
# next to a U-Net pass over 49 or 784 positions.

# %% [markdown]
# ## 3. Why a step is cheaper: the grid (12.2)-(12.3)
#
# Per image, a 3x3 convolution from C to C channels on an H x W grid does
#
# $$ \text{conv: } 2 \cdot 9\,C^2 \cdot HW \text{ floating-point operations} \tag{12.2} $$
#
# (one multiply-add per weight per position), so a ResBlock on $7\times7$ does 1/16 of the work
# of the same block on $28\times28$.  Self-attention over the $HW$ positions of a feature map
# adds the scores and their weighted sum, which grow with the *square* of the grid, and
# cross-attention to $L$ tokens grows with $HW\,L$:
#
# $$
# \begin{aligned}
# \text{self-attention: }& 2 \cdot 4 C^2 \cdot HW \ (q, k, v, \text{out}) + 2 \cdot 2 C\,(HW)^2
#    \ (\text{scores, sum})\\
# \text{cross-attention: }& 2 \cdot 2 C^2 \cdot HW + 2 \cdot 2 D_\text{ctx} C L + 2 \cdot 2 C\,HW\,L
# \end{aligned} \tag{12.3}
# $$
#
# At $28\times28$ the $(HW)^2$ term is $784^2 = 614{,}656$ scores per head, 256 times as many as
# at $7\times7$:
# this is why neither of minidiff's pixel presets puts attention above 7x7, and why the LDM
# paper calls pixel-space attention at high resolution prohibitive.  Below, one block of each
# kind, same channels, forward pass, timed at 28x28 and at 7x7.  The times are printed, never
# asserted (on a busy machine they come out in any order); what is asserted is counted:
# (12.2)-(12.3) against the multiply-adds of each block's own weights.

# %%
def flops(kind: str, channels: int, hw: int) -> float:
    """(12.2)-(12.3): floating-point operations per image of one block's main terms."""
    if kind == "ResBlock":
        return 2 * (2 * 9 * channels ** 2 * hw)
    if kind == "self-attention":
        return 2 * 4 * channels ** 2 * hw + 2 * 2 * channels * hw ** 2
    return (2 * 2 * channels ** 2 * hw + 2 * 2 * CONTEXT_DIM * channels * CONTEXT_LENGTH
            + 2 * 2 * channels * hw * CONTEXT_LENGTH)


width, batch_blocks, block_repeats = (16, 2, 4) if args.quick else (32, 8, 7)
emb = Tensor(backend.randn(batch_blocks, 4 * width))
context = Tensor(backend.randn(batch_blocks, CONTEXT_LENGTH, CONTEXT_DIM))
blocks = {"ResBlock": ResBlock(width, width, 4 * width),
          "self-attention": AttentionBlock(width, 4),
          "cross-attention": MultiheadAttention(width, 4, CONTEXT_DIM)}


def block_call(kind, x):
    if kind == "ResBlock":
        return lambda: blocks[kind](x, emb)
    if kind == "self-attention":
        return lambda: blocks[kind](x)
    tokens = Tensor(xp.ascontiguousarray(x.data.reshape(batch_blocks, width, -1)
                                         .transpose(0, 2, 1)))       # (B, HW, C)
    return lambda: blocks[kind](tokens, context)


grid_ratio = {}
print(f"(12.2)-(12.3) one block, {width} channels, batch {batch_blocks}, forward only, "
      f"best of {block_repeats} (ms per image; shared machine: indicative)")
print(f"{'block':16s} {'28x28':>8s} {'7x7':>8s} {'measured ratio':>15s} {'FLOP ratio':>11s}")
with no_grad():
    for kind in blocks:
        calls = {side: block_call(kind, Tensor(backend.randn(batch_blocks, width, side, side)))
                 for side in (28, 7)}
        runs = {28: [], 7: []}
        for call in calls.values():
            call()                                        # warm-up
        for _ in range(block_repeats):                    # alternately: the load hits both
            for side, call in calls.items():
                runs[side].append(timed(call) / batch_blocks)
        seconds = {side: min(values) for side, values in runs.items()}
        grid_ratio[kind] = seconds[28] / seconds[7]
        predicted = flops(kind, width, 784) / flops(kind, width, 49)
        print(f"{kind:16s} {1e3 * seconds[28]:8.3f} {1e3 * seconds[7]:8.3f} "
              f"{grid_ratio[kind]:15.1f} {predicted:11.1f}")

# What is asserted is counted, not timed (a timing on a busy machine can come out in any
# order): (12.2)-(12.3) against the multiply-adds of each block's own weight matrices, each
# applied once per position (the keys' and values' once per token), plus the attention terms.


def counted_flops(kind: str, block, hw: int) -> int:
    """2 x (weights of every matrix or kernel of ``block``) x (the rows it is applied to), plus
    2 x 2 C x (positions) x (keys) for the scores and their weighted sum."""
    total = 0
    for name, p in block.named_parameters():
        if len(p.shape) >= 2:                       # a matrix or a kernel, not a bias or norm
            # keys and values read the tokens; the time embedding's projection (left out of
            # (12.2) as not a main term) runs once per image, not per position
            rows = {"k_proj": CONTEXT_LENGTH, "v_proj": CONTEXT_LENGTH,
                    "emb_proj": 0}.get(name.split(".")[0], hw)
            total += 2 * int(np.prod(p.shape)) * rows
    keys = {"ResBlock": 0, "self-attention": hw, "cross-attention": CONTEXT_LENGTH}[kind]
    return total + 2 * 2 * width * hw * keys


for kind, block in blocks.items():
    for hw in (49, 784):
        by_weights = counted_flops(kind, block, hw)
        assert by_weights == flops(kind, width, hw), (kind, hw, by_weights, flops(kind, width, hw))
flop_ratio = {kind: flops(kind, width, 784) / flops(kind, width, 49) for kind in blocks}
assert flop_ratio["ResBlock"] == 16.0
assert flop_ratio["self-attention"] > 4 * flop_ratio["ResBlock"] > flop_ratio["cross-attention"]
print("(12.2)-(12.3) == 2 x the weights of each block x the rows they meet (+ attention's "
      "scores): a ResBlock's FLOPs grow 16x from 7x7 to 28x28, self-attention's "
      f"{flop_ratio['self-attention']:.0f}x; measured time ratios above: "
      + ", ".join(f"{k} {v:.1f}x" for k, v in grid_ratio.items()))

# %% [markdown]
# The measured ratios fall short of the FLOP ratios because at 7x7 the fixed cost of each
# operation (Python, the array library's dispatch, im2col's copies) is a large share of a
# tiny amount of arithmetic; the order, attention far above convolution, is as (12.3) says.

# %% [markdown]
# ## 4. The cost table (12.4)
#
# Drawing one image with $S$ sampling steps costs
#
# $$ \text{DM: } S\,F_\text{pixel}, \qquad \text{LDM: } S\,F_\text{latent} + D \tag{12.4} $$
#
# ($F$ a U-Net forward pass per image, $D$ one decoder pass; with classifier-free guidance each
# step runs the U-Net on a doubled batch, so $S F$ becomes about $2 S F$ for both.)  Training
# costs one forward and backward of the U-Net per image; the LDM's encoder is not in its
# step, because the training set is encoded once (section 5).  Measured with
# `minidiff.bench.ldm` (`Side`, `time_sides`: the code of `minidiff bench ldm`, which times
# the shipped checkpoints), on untrained models of the configs of section 2 (the cost does
# not depend on the weights), the LDM with an autoencoder of the shipped `ae-quick` shape.
# The models take turns, so a change of load touches all of them; the machine is shared with
# other work, so read the ratios, which suffer less from that than the times.  Peak memory is
# the rise of the resident set over two training steps of batch `batch`, each model in a
# fresh process (`config_memory`; in this one, memory freed by the models before would be
# handed out again and hide it); skipped with `--quick`.

# %%
latent_autoencoder = {"autoencoder": autoencoder_shape.to_dict()}
memory = {name: None if args.quick else config_memory(
    config, batch, **how, **(latent_autoencoder if how.get("conditioned") and
                             name.startswith("latent") else {}))
    for name, (config, how) in variants.items()}
backend.manual_seed(0)
times = time_sides(sides, repeat, sample_batch, steps=S)


def per_image(name, key, n, how=statistics.median):
    return 1e3 * how(times[name][key]) / n


print(f"(12.4) cost per image: training step batch {batch}; DDIM S = {S} steps on "
      f"{sample_batch} images, decoder included; median of {repeat} (shared machine: the "
      f"times are indicative, the ratios less disturbed)")
print(f"{'model':22s} {'params':>9s} {'train ms':>9s} {'sample ms':>10s} {'decoder ms':>11s} "
      f"{'peak MiB':>9s}")
for name, side in sides.items():
    decoder = f"{per_image(name, 'decode', sample_batch):.2f}" if name.startswith("latent") \
        else "-"
    mem = "-" if memory[name] is None else f"{memory[name]:.1f}"
    print(f"{name:22s} {side.model.num_parameters():9,d} "
          f"{per_image(name, 'train', batch):9.2f} {per_image(name, 'sample', sample_batch):10.1f} "
          f"{decoder:>11s} {mem:>9s}")

print("ratios pixel / latent (how many times cheaper the LDM is):")
ratios = {}
for kind in ("", *KINDS):
    pixel, latent = f"pixel{kind}", f"latent{kind}"
    ratios[kind] = {key: per_image(pixel, key, n) / per_image(latent, key, n)
                    for key, n in (("train", batch), ("sample", sample_batch))}
    show(f"{kind.strip(' +') or 'unconditional'}: training / sampling",
         f"{ratios[kind]['train']:.1f}x / {ratios[kind]['sample']:.1f}x", width=36)
print("ratios conditioned / unconditioned (what the switch costs):")
for space_name in ("pixel", "latent"):
    for kind in KINDS:
        name = f"{space_name}{kind}"
        train, sample = (per_image(name, key, n) / per_image(space_name, key, n)
                         for key, n in (("train", batch), ("sample", sample_batch)))
        show(f"{name}: training / sampling", f"{train:.2f}x / {sample:.2f}x", width=36)
for kind in ("", *KINDS):   # the best of the repeats: least disturbed; printed, not asserted
    fastest_pixel = per_image(f"pixel{kind}", "sample", sample_batch, min)
    fastest_latent = per_image(f"latent{kind}", "sample", sample_batch, min)
    show(f"fastest sampling per image, pixel{kind} / latent{kind}",
         f"{fastest_pixel / fastest_latent:.1f}x", width=36)

# %% [markdown]
# ## 5. What the autoencoder costs once (12.5)
#
# The LDM's savings are paid for twice, once each:
#
# * training the autoencoder itself (lesson 09: `data/checkpoints/ae.md` records 1,000 steps,
#   roughly 3-4 minutes on an idle 2-core machine by its estimate);
# * encoding the 60,000 training images once, `LatentSpace.use` (lesson 10), before the
#   diffusion model's first step, instead of at every step (`ldm.md`: 423 s for the shipped
#   model, on a machine loaded 5-6 times over);
#
# and per sample, the decoder pass D, already inside the sampling column above.  If E is the
# encoder's time per image, the one-off encoding costs 60,000 E, and every image the LDM sees
# in training saves (train_pixel - train_latent), so it pays the encoding back after
#
# $$ \frac{60{,}000\,E}{\text{train}_\text{pixel} - \text{train}_\text{latent}} \text{ images seen, i.e. }
#    \frac{E}{\text{train}_\text{pixel} - \text{train}_\text{latent}} \text{ epochs.} \tag{12.5} $$

# %%
encode_batch = 8 if args.quick else 64
images = Tensor(backend.randn(encode_batch, 1, 28, 28) * 0.5)
with no_grad():
    autoencoder.encode(images)
    encode_ms = 1e3 * min(timed(lambda: autoencoder.encode(images))
                          for _ in range(repeat)) / encode_batch
saving_ms = per_image("pixel", "train", batch) - per_image("latent", "train", batch)
show("encoder E, ms per image", f"{encode_ms:.3f}")
show("(12.5) encoding the training set once", f"{60_000 * encode_ms / 1e3:.1f} s (60,000 images)")
decode_ms = per_image("latent", "decode", sample_batch)
decode_share = decode_ms / per_image("latent", "sample", sample_batch)
show("decoder D, ms per sampled image",
     f"{decode_ms:.3f} ({100 * decode_share:.2g}% of the LDM's sampling time at S = {S})")
show("training saving per image seen", f"{saving_ms:.2f} ms")
if saving_ms > 0:
    show("(12.5) encoding paid back after", f"{encode_ms / saving_ms:.2g} epochs")

# %% [markdown]
# ## 6. Where the quality goes
#
# Speed is half of the comparison.  The LDM's samples can be no better than what its decoder
# can draw, so the autoencoder bounds, roughly, what its FID can reach: the rFID of its
# reconstructions (the FID between D(E(x)) and x on the test set).  The figures below are
# read from the records of what `minidiff eval` measured on the shipped models
# (`data/checkpoints/figures.json`, `ae.md`), not recomputed here: FID of n samples drawn with
# each model's own sampler (both in the table) against the 10,000 test digits, on the
# features of minidiff's MNIST classifier (so
# comparable only with other minidiff FIDs), with the classifier's mean confidence in its
# label; the conditional models add prompted accuracy (the share of samples that the
# classifier reads as the prompted digit).  Their FID is of another kind: 1,000 balanced
# samples (100 per digit word) at the model's default guidance, so biased upward by the
# smaller n (floor 14.3 at n = 1,000 against 4.87 at 10,000) and raised by guidance itself,
# which trades variety for accuracy (`txt2img.md`, the v model: 37.0 at guidance 1, 111.4
# at 2, 231.2 at 3; the x_0 model at 2,500 steps 101.2 at 2 and 198.4 at 3, the shipped one
# at 3,500 steps 102.9 at 2; all at n = 1,000).

# %%
def quality_record(path: str) -> dict:
    try:
        with open(resolve_user_path(path), encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, json.JSONDecodeError):
        return {}


def autoencoder_rfid():
    """The rFID in ``ae.md``'s table, or None where the file or the row is missing."""
    try:
        text = pathlib.Path(find("checkpoints/ae.md")).read_text(encoding="utf-8")
    except Exception:   # noqa: BLE001  (not shipped with this copy: say so below)
        return None
    match = re.search(r"\|\s*rFID[^|]*\|\s*([0-9.]+)\s*\|", text)
    return float(match.group(1)) if match else None


figures = quality_record(args.figures)
ROWS = (("quick.npz", "DM, pixel (quick)"), ("ldm.npz", "LDM (ldm-quick)"),
        ("txt2img.npz", "LDM + text (cross-attn)"),
        ("inpaint.npz", "LDM + text, inpainting (hybrid)"))


def cell(record, key, form):
    return form.format(record[key]) if record and record.get(key) is not None else "-"


print(f"{'model':32s} {'FID':>7s} {'n':>7s} {'confidence':>11s} {'prompted acc.':>14s}  sampler")
for key, label in ROWS:
    record = figures.get(key)
    if not record:
        print(f"{label:32s} not measured yet ({key} has no record in figures.json)")
        continue
    print(f"{label:32s} {cell(record, 'fid', '{:7.1f}')} {cell(record, 'n', '{:7,d}')} "
          f"{cell(record, 'mean_confidence', '{:11.3f}')} "
          f"{cell(record, 'prompted_accuracy', '{:14.3f}')}  "
          f"{record.get('sampler', '?')} {record.get('steps', '?')} steps")
rfid = autoencoder_rfid()
floor = next((r["fid_floor"] for r in figures.values() if isinstance(r, dict)
              and "fid_floor" in r), None)
show("autoencoder rFID (ae.md)", "not recorded" if rfid is None else f"{rfid:.2f}")
show("FID floor (train vs test images)", "not recorded" if floor is None else f"{floor:.2f}")
if rfid is not None and figures.get("ldm.npz"):
    assert rfid < figures["ldm.npz"]["fid"], "the LDM's samples are not closer than D's own"
    print(f"the decoder alone accounts for at most {rfid:.2f} of the LDM's FID of "
          f"{figures['ldm.npz']['fid']:.1f}: the rest is the diffusion model's")
for key, _ in ROWS:
    if figures.get(key):
        assert figures[key]["n"] > 0 and figures[key]["fid"] >= 0, key

# %% [markdown]
# On the shipped models the LDM's FID is well below the pixel model's (compare them at the same
# n: 21.5 against 46.6 at n = 10,000, the LDM sampled with DDPM 50, the pixel model with
# DDPM 200, `ldm.md` and `quick.md`), from a training run of about the pixel model's time
# (`ldm.md`: 10 min 50 s for 4,800 steps of 128 latents, the encoding included; `quick.md`:
# 9 min 16 s for 3,500 steps of 48 images, the install included; both at two threads on an
# idle machine).  Even against the pixel model on 2x2 patches, a latent example is several
# times cheaper (section 4), so a minute of training shows the LDM 3.1 times as many
# digits (614,400 latents in 650 s against 168,000 images in 556 s).  The
# autoencoder's rFID, below the floor set by two sets of real digits, says that little of
# the gap to real digits comes from the latent space: it comes from short training.  (On
# large images the LDM paper finds
# the same: with a mild downsampling factor, f = 4 to 8, the autoencoder costs little
# quality and the diffusion model trains and samples far faster; f = 4 here, 28 -> 7.)

# %% [markdown]
# ## Figures

# %%
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    names = list(sides)
    sample_ms = [per_image(n, "sample", sample_batch) for n in names]
    decode_ms = [per_image(n, "decode", sample_batch) if n.startswith("latent") else 0.0
                 for n in names]
    unet_ms = [s - d for s, d in zip(sample_ms, decode_ms)]
    axes[0].barh(names, unet_ms, label=f"U-Net, S = {S} steps")
    axes[0].barh(names, decode_ms, left=unet_ms, label="decoder, once")
    axes[0].set(xlabel="ms per image", title="(12.4) sampling cost per image (shared machine)")
    axes[0].legend(fontsize=8)
    axes[0].invert_yaxis()
    kinds = list(grid_ratio)
    axes[1].bar(np.arange(len(kinds)) - 0.2, [grid_ratio[k] for k in kinds], 0.4,
                label="measured time ratio")
    axes[1].bar(np.arange(len(kinds)) + 0.2,
                [flops(k, width, 784) / flops(k, width, 49) for k in kinds], 0.4,
                label="FLOP ratio (12.2)-(12.3)")
    axes[1].set_xticks(np.arange(len(kinds)), kinds)
    axes[1].set_yscale("log")
    axes[1].set(ylabel="cost at 28x28 / cost at 7x7", title="one block: the grid's price")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "12_cost.png", dpi=100)
    plt.close(fig)
    print(f"figure written to {out_dir / '12_cost.png'}")

# %% [markdown]
# ## Summary (the article's section 15, with where each point lives)
#
# * Diffusion has a forward half, fixed, with a closed form for x_t (lessons 01-02), and a
#   reverse half learned by a network that predicts the noise eps (lessons 03-04, 06-07).
# * Training on the simple loss L_simple gives better samples than the full bound (the
#   article's claim, after Ho et al.; lesson 04 derives both losses).
# * An LDM runs exactly that diffusion on the latents of an autoencoder (lessons 09-10): the
#   diagrams of section 1 differ only by E, D and the space between them.
# * (12.2)-(12.4) It is cheaper because every layer's work scales with the grid it runs on:
#   7x7 instead of 28x28 divides the convolutions' work by 16 and self-attention's scores by
#   256; the measured sampling and training ratios are in section 4.
# * (12.5) The price is paid once (the autoencoder's training, one pass of E over the data)
#   and per sample (one pass of D), and in quality, the autoencoder's rFID.
# * Conditioning (the switch) adds cross-attention or input channels to the same U-Net; it
#   costs the same small share in either space.

# %%
print("lesson 12: all checks passed")
