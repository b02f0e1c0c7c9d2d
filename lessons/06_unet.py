# %% [markdown]
# # Lesson 06 — The U-Net
#
# DDPM needs a network $\epsilon_\theta(x_t, t)$ that maps a noisy image and its step to the
# noise in it: an image in, an image of the same shape out, told which step it is at.  Ho et al. use a
# U-Net (a PixelCNN++-style one with Wide-ResNet blocks and self-attention at 16x16); minidiff's
# reference configuration is its small MNIST cousin, 1,623,169 parameters.
#
# Sections:
#
# 1. The time embedding, eq. (6.1)
# 2. A ResBlock: the embedding enters in the middle
# 3. Attention over pixels
# 4. The whole network step by step, with shapes and the skip connections
# 5. Where the parameters are
# 6. Patches: the first level at half the size
#
# ```
# python lessons/06_unet.py            # the full lesson
# python lessons/06_unet.py --quick    # a fast pass (used by the tests)
# python lessons/06_unet.py --out DIR  # where the figure goes (default runs/lessons)
# ```

# %%
import math

from _lesson import host, lesson_parser, start  # finds minidiff; --quick, --out
from minidiff import backend
from minidiff.models import REFERENCE_CONFIG, UNet, timestep_embedding
from minidiff.nn import functional as F
from minidiff.ops import concatenate
from minidiff.tensor import Tensor, no_grad

np = backend.host  # NumPy, for host-side numbers in this lesson

args, out_dir = start(lesson_parser("Lesson 06: the U-Net", "a fast pass (batch 2)"))


# %% [markdown]
# ## 1. The time embedding, eq. (6.1)
#
# One network serves all $T$ steps, so it must be told $t$.  As in the Transformer's
# positional encoding, $t$ becomes cosines and sines at geometrically spaced frequencies:
#
# $$
# \omega_i = \exp\Big(-\ln(10000)\, \frac{i}{d/2}\Big), \quad i = 0, \dots, \tfrac{d}{2} - 1,
# \qquad
# \mathrm{emb}(t) = \big[\cos(t\,\omega_i) \;\big|\; \sin(t\,\omega_i)\big] .
# \tag{6.1}
# $$
#
# The fastest component turns once per $2\pi \approx 6$ steps, the slowest once per about
# 60,000: nearby steps get similar vectors, far-apart ones different vectors, and every
# vector has the same length, $\lVert \mathrm{emb}(t) \rVert^2 = \sum_i (\cos^2 + \sin^2) = d/2$.
# An MLP (Linear-SiLU-Linear) widens it to $4\times$ the base channels, and every ResBlock
# reads it.  The check: `timestep_embedding` against (6.1) written out here.

# %%
d = REFERENCE_CONFIG.time_embed_dim
steps = np.arange(1000)
E = host(timestep_embedding(steps, d))
omega = np.exp(-math.log(10000.0) * np.arange(d // 2) / (d // 2))
expected = np.concatenate([np.cos(steps[:, None] * omega), np.sin(steps[:, None] * omega)], 1)
assert E.shape == (1000, d)
assert np.allclose(E, expected, atol=1e-5), "(6.1)"
assert np.allclose((E ** 2).sum(1), d // 2, atol=1e-3)   # every row has norm sqrt(d/2)
similarity = E @ E.T / (d // 2)
print(f"(6.1) time embedding: d = {d}, |emb(t)|^2 = d/2 for every t; cosine similarity "
      f"emb(500).emb(501) = {similarity[500, 501]:.3f}, emb(500).emb(900) = "
      f"{similarity[500, 900]:.3f}")
assert similarity[500, 501] > similarity[500, 900]

# %% [markdown]
# ## 2. A ResBlock
#
# $$
# \begin{aligned}
# h &= \mathrm{conv}_{3\times3}\big(\mathrm{SiLU}(\mathrm{GN}(x))\big), \qquad
# h \leftarrow h + \mathrm{Linear}\big(\mathrm{SiLU}(\mathrm{emb})\big), \qquad
# h \leftarrow \mathrm{conv}_{3\times3}\big(\mathrm{SiLU}(\mathrm{GN}(h))\big), \\
# \mathrm{out} &= \mathrm{skip}(x) + h
# \end{aligned}
# $$
#
# (skip: a $1\times1$ conv when the channel count changes).  The embedding is added to every
# pixel of every channel: a per-channel bias that depends on $t$.  We rebuild one block's
# forward pass from functional ops and compare.

# %%
model = UNet(REFERENCE_CONFIG)
batch = 2 if args.quick else 4
x = Tensor(backend.randn(batch, 1, 28, 28))
t = backend.to_device(np.array([0, 250, 500, 999][:batch]))
with no_grad():
    emb = model.time_mlp2(F.silu(model.time_mlp1(timestep_embedding(t, d))))
    block = model.down[1].blocks[0]                        # 32 -> 64 channels: 1x1 skip
    h_in = Tensor(backend.randn(batch, 32, 14, 14))
    h = block.conv1(F.silu(block.norm1(h_in)))
    h = h + block.emb_proj(F.silu(emb)).reshape(batch, 64, 1, 1)
    h = block.conv2(F.silu(block.norm2(h)))
    by_hand = host(block.skip(h_in) + h)
    assert np.allclose(by_hand, host(block(h_in, emb)), atol=1e-5)
print(f"ResBlock 32 -> 64 at 14x14: emb {tuple(emb.shape)} -> a bias per channel; "
      f"out {by_hand.shape}")

# %% [markdown]
# ## 3. Attention over pixels
#
# At $7\times7$ every pixel attends to every other pixel: the 49 pixels are tokens of width
# $C$, a $1\times1$ conv makes $q, k, v$, and $\mathrm{softmax}(q k^\top / \sqrt{d})\, v$ (lesson
# 05, (5.7)) mixes information across the whole image in one step (a $3\times3$ conv only sees
# its neighbours).  4 heads of width 16.

# %%
with no_grad():
    attn = model.mid_attention
    a_in = Tensor(backend.randn(batch, 64, 7, 7))
    qkv = host(attn.qkv(attn.norm(a_in))).reshape(batch, 3, 4, 16, 49)
    q, k, v = (qkv[:, i].transpose(0, 1, 3, 2) for i in range(3))   # (B, heads, 49, 16)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(16)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    o = (weights @ v).transpose(0, 1, 3, 2).reshape(batch, 64, 7, 7)
    by_hand = host(a_in) + host(attn.proj_out(Tensor(backend.to_device(o.astype("float32")))))
    assert np.allclose(by_hand, host(attn(a_in)), atol=1e-4)
print(f"attention: {49} tokens x 4 heads, weights {weights.shape}, rows sum to 1: "
      f"{np.allclose(weights.sum(-1), 1)}")

# %% [markdown]
# ## 4. The whole network, step by step
#
# We now run the U-Net by hand, mirroring `UNet.forward`, printing the shape after each
# stage.  On the way down every activation is pushed onto a stack of skips; on the way up each
# ResBlock pops one and concatenates it to its input (channels add up), so fine detail from
# the 28x28 levels reaches the output without squeezing through 7x7.

# %%
shapes = []


def show(name, h):
    shapes.append((name, tuple(h.shape)))
    print(f"  {name:28s} {str(tuple(h.shape)):>20s}")


print("shapes through the reference U-Net:")
with no_grad():
    emb = model.time_mlp2(F.silu(model.time_mlp1(timestep_embedding(t, d))))
    show("time embedding", emb)
    h = model.conv_in(x)
    show("conv_in", h)
    skips = [h]
    for i, level in enumerate(model.down):
        attentions = iter(level.attentions)
        for j, blk in enumerate(level.blocks):
            h = blk(h, emb)
            if len(level.attentions):
                h = next(attentions)(h)
            skips.append(h)
            show(f"down {i} block {j}" + (" + attn" if len(level.attentions) else ""), h)
        if i < len(model.downsamples):
            h = model.downsamples[i](h)
            skips.append(h)
            show(f"downsample {i}", h)
    h = model.mid_block2(model.mid_attention(model.mid_block1(h, emb)), emb)
    show("middle (res, attn, res)", h)
    print(f"  skips stacked: {len(skips)}")
    for i, level in enumerate(model.up):
        attentions = iter(level.attentions)
        for j, blk in enumerate(level.blocks):
            skip = skips.pop()
            h = concatenate([h, skip], axis=1)
            show(f"up {i} concat skip {tuple(skip.shape)[1]}ch", h)
            h = blk(h, emb)
            if len(level.attentions):
                h = next(attentions)(h)
        if i < len(model.upsamples):
            h = model.upsamples[i](h)
            show(f"upsample {i}", h)
    out = model.conv_out(F.silu(model.norm_out(h)))
    show("conv_out (predicted eps)", out)
    reference = model(x, t)
assert not skips, "every skip is consumed exactly once"
assert out.shape == x.shape
assert np.allclose(host(out), host(reference), atol=1e-5)
print("step-by-step forward == model(x, t)")

# %% [markdown]
# ## 5. Where the parameters are

# %%
groups = {}
for name, p in model.named_parameters():
    parts = name.split(".")
    key = ".".join(parts[:3]) if parts[0] in ("down", "up") else parts[0]
    groups[key] = groups.get(key, 0) + int(np.prod(p.shape))
total = sum(groups.values())
print(f"{'block':28s} {'parameters':>12s}")
for key, count in groups.items():
    print(f"{key:28s} {count:12,d}")
print(f"{'total':28s} {total:12,d}")
assert total == model.num_parameters() == 1_623_169

# %% [markdown]
# ## 6. Patches: the first level at half the size
#
# A level costs about the same arithmetic at every resolution of the reference network
# (halving the size quarters the pixels, doubling the channels quadruples a 3x3 conv's work),
# but the full-size level has the fewest channels, so its products are the thinnest and its
# elementwise passes (GroupNorm, SiLU) touch the most numbers.  With `patch_size` $p$ the
# U-Net never runs at full size: each $p\times p$ patch of a channel becomes $p^2$ channels of
# one pixel,
#
# $$
# y[n,\; c\,p^2 + i\,p + j,\; a,\; b] = x[n,\; c,\; p\,a + i,\; p\,b + j],
# \qquad 0 \le i, j < p,
# \tag{6.2}
# $$
#
# (`space_to_depth`), the levels start at $H/p$, and `conv_out`'s $C p^2$ channels go back
# through the inverse (`depth_to_space`).  (6.2) is a permutation: no pixel is lost, and the
# first $3\times3$ conv sees a $3p \times 3p$ window of the image.  The `quick` preset runs on
# $2\times2$ patches (32 and 64 channels at 14 and 7): a training step costs about 0.6 of
# the 28x28 network with 16/32/64 channels and as many parameters, so in the same minutes it
# takes 1.6 times as many steps (docs/recipes.md).  The check: (6.2) written as loops, and
# the round trip.

# %%
p = 2
image = np.arange(2 * 6 * 6, dtype="float32").reshape(1, 2, 6, 6)
patches = host(F.space_to_depth(Tensor(backend.to_device(image)), p))
by_loops = np.zeros((1, 2 * p * p, 3, 3), dtype="float32")
for c in range(2):
    for i in range(p):
        for j in range(p):
            for a in range(3):
                for b in range(3):
                    by_loops[0, c * p * p + i * p + j, a, b] = image[0, c, p * a + i, p * b + j]
assert np.array_equal(patches, by_loops), "(6.2)"
back = host(F.depth_to_space(Tensor(backend.to_device(patches)), p))
assert np.array_equal(back, image)
patched = UNet(REFERENCE_CONFIG, patch_size=2, base_channels=32, channel_mults=(1, 2),
               num_res_blocks=1, attention_resolutions=())
with no_grad():
    out = patched(x, t)
assert out.shape == x.shape
print(f"(6.2) space_to_depth: {image.shape} -> {patches.shape}, and back; a U-Net on 2x2 "
      f"patches: conv_in reads {patched.conv_in.weight.shape[1]} channels at 14x14, "
      f"returns {tuple(out.shape)}")

# %% [markdown]
# ## A figure: the embedding, and the size of each block

# %%
try:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: skipping the figure (pip install matplotlib)")
else:
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].imshow(E.T, aspect="auto", cmap="RdBu", interpolation="nearest")
    axes[0].set(title="(6.1) emb(t): [cos | sin]", xlabel="step t", ylabel="component")
    axes[1].imshow(similarity, cmap="viridis")
    axes[1].set(title="emb(s) . emb(t) / (d/2)", xlabel="t", ylabel="s")
    axes[2].barh(list(groups), list(groups.values()))
    axes[2].invert_yaxis()
    axes[2].tick_params(axis="y", labelsize=7)
    # a few ticks in thousands, so that six-digit counts do not run into each other
    axes[2].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
    axes[2].xaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda value, _: f"{value / 1000:.0f}k"))
    axes[2].set(title=f"parameters per block (total {total:,})", xlabel="parameters")
    fig.tight_layout()
    fig.savefig(out_dir / "06_unet.png", dpi=100)
    plt.close(fig)
    print(f"figure written to {out_dir / '06_unet.png'}")

# %% [markdown]
# ## Summary
#
# * (6.1) $t$ enters as $[\cos \mid \sin]$ features, an MLP, then a per-channel bias in every
#   ResBlock.
# * Attention at 7x7 lets every pixel see the whole image; 3x3 convs do the rest.
# * Skips carry each resolution's activations across to the matching decoder level.
# * (6.2) With `patch_size` $p$ the network runs on $p\times p$ patches as $p^2$ channels,
#   every level at $1/p$ the size.
#
# `python -m minidiff.bench.unet` times this network against PyTorch.  Next: training it.

# %%
print("lesson 06: all checks passed")
