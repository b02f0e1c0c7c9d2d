# %% [markdown]
# # Lesson 05 — Layers by hand
#
# The U-Net that learns to denoise is made of a handful of layers: convolutions, group
# normalization, SiLU, attention, linear maps.  `minidiff.nn.functional` implements each one as
# a single operation whose backward pass is derived on paper, not assembled from a dozen
# primitive nodes: it is faster, uses less memory, and the derivation is the lesson.
#
# Sections:
#
# 1. im2col: a convolution is one matrix product, eq. (5.1)-(5.1b)
# 2. The convolution's gradient: two more matrix products and col2im, eq. (5.2)-(5.4c)
# 3. Group norm and its backward pass, eq. (5.5)-(5.6)
# 4. Attention, $\mathrm{softmax}(Q K^\top / \sqrt{d})\, V$, its shapes and its backward,
#    eq. (5.7)-(5.8)
# 5. Modules, optimizers, and a figure
#
# Every claim is checked with `assert` as the script runs.
#
# ```
# python lessons/05_layers.py            # the full lesson
# python lessons/05_layers.py --quick    # a fast pass (used by the tests)
# python lessons/05_layers.py --out DIR  # where the figure goes (default runs/lessons)
# ```

# %%
import math

from _lesson import host, lesson_parser, pyplot, start  # finds minidiff; --quick, --out
import minidiff as md
from minidiff import backend, nn, optim
from minidiff.nn import functional as F
from minidiff.gradcheck import gradcheck

np = backend.host  # NumPy, for host-side reference numbers in this lesson

args, out_dir = start(lesson_parser("Lesson 05: layers by hand", "a fast pass (smaller checks)"), dtype="float64")  # float64: we compare against finite differences
rng = np.random.default_rng(0)


# %% [markdown]
# ## 1. im2col
#
# A convolution slides a $k_h \times k_w$ kernel over the (zero-padded) image.  Each output
# pixel is a dot product between the kernel and the window under it.  Copy every window into a
# column — rows indexed by (channel, $i$, $j$), columns by (image, $y$, $x$) — and all those dot
# products become one matrix product:
#
# $$
# y[n, o, a, b] = \sum_{c, i, j} w[o, c, i, j]\; x_{\text{pad}}[n, c, s a + i, s b + j],
# \qquad
# Y = W\, \mathrm{cols}, \quad W = w\text{ reshaped to } (O, C k_h k_w), \quad
# \mathrm{cols} = \mathrm{im2col}(x_{\text{pad}}) \in \mathbb{R}^{C k_h k_w \times N H_o W_o} .
# \tag{5.1}
# $$
#
# On a $4 \times 4$ image numbered 0..15 with a $3 \times 3$ kernel there are $2 \times 2$
# windows, so `cols` has 9 rows and 4 columns; column $(a, b)$ is the window whose top-left
# corner is $(a, b)$.  The check: $W\,\mathrm{cols}$ against the window-by-window loop.

# %%
image = md.tensor(np.arange(16.0).reshape(1, 1, 4, 4))
cols, (ho, wo) = F.im2col(host(image), 3)
print("image:\n", host(image)[0, 0])
print(f"cols ({cols.shape[0]} rows = (c, i, j), {cols.shape[1]} columns = (n, a, b)):\n",
      backend.to_host(cols))
assert cols.shape == (9, 4) and (ho, wo) == (2, 2)
assert list(backend.to_host(cols)[:, 0]) == [0, 1, 2, 4, 5, 6, 8, 9, 10]  # the top-left window

weight = md.tensor(rng.standard_normal((2, 1, 3, 3)))
by_gemm = host(weight).reshape(2, 9) @ backend.to_host(cols)
by_loop = np.array([[(host(weight)[o, 0] * host(image)[0, 0, a:a + 3, b:b + 3]).sum()
                     for a in range(2) for b in range(2)] for o in range(2)])
assert np.allclose(by_gemm, by_loop), "(5.1)"
assert np.allclose(host(F.conv2d(image, weight)).reshape(2, 4), by_loop), "(5.1): conv2d"
print("(5.1): W @ im2col(x) equals the window-by-window loop")

# %% [markdown]
# Stride and padding only change which windows are taken: with padding 1 and stride 2, a
# $5 \times 5$ image gives $\lfloor (5 + 2 - 3) / 2 \rfloor + 1 = 3$ windows per side.  In the
# library the columns come from one strided *view* of the padded input (`as_strided`), copied
# once, so there is no Python loop over pixels or images.
#
# "Same" convolutions (stride 1, padding $(k - 1) / 2$, so that the output grid is the input
# grid) take a shortcut.  `flat_pad` lays each channel out as one long row, images and their
# rows end to end, and `flat_windows` shows window entry $(i, j)$ of every output position as
# that row shifted by $(i - p) W + (j - p)$: $k_h k_w$ long contiguous copies build the
# columns.
# The shift is wrong only where a window hangs over the image's edge: it reads a pixel of the
# neighbouring row (or image) where im2col reads a padding zero.  conv2d copies the shifted
# rows and then zeroes exactly those entries.

# %%
x5 = md.tensor(rng.standard_normal((1, 2, 5, 5)))
cols5, (h5, w5) = F.im2col(host(x5), 3, stride=2, padding=1)
assert (h5, w5) == (3, 3) and cols5.shape == (2 * 9, 9)

from minidiff.nn.functional.conv_fast import flat_pad, flat_windows  # noqa: E402

x_same = backend.to_device(rng.standard_normal((2, 1, 3, 4)))     # two 3 x 4 images
cols_same, _ = F.im2col(x_same, 3, 1, 1)                         # (9, 2 * 3 * 4)
shifted = flat_windows(flat_pad(x_same, 3), 3, 4, 24).reshape(9, 24)
cols_same, shifted = backend.to_host(cols_same), backend.to_host(shifted)
wrong = shifted != cols_same
assert wrong.any() and (cols_same[wrong] == 0).all()    # only padding entries differ
print(f"shifted rows: {wrong.sum()} of {wrong.size} entries read a neighbour where im2col "
      f"has a padding zero; conv2d zeroes them")

# %% [markdown]
# Strided windows have the same kind of shortcut when $H = s H_o$ (the U-Net's stride-2
# downsampling: kernel 3, padding 1, even sizes).  Write kernel offset $i$ as
# $i - p = s d + r$ with $0 \le r < s$.  Output row $a$ reads input row
# $s a + i - p = s (a + d) + r$, which is row $a + d$ of the *phase* `x[r::s]` (the rows
# $r, r + s, r + 2s, \dots$), and every phase has $H_o$ rows:
#
# $$
# y[a, b] = \sum_{i, j} w[i, j]\; x_{\text{phase}(r_i, r_j)}[a + d_i,\, b + d_j]
# \quad (0 \text{ outside}) :
# \tag{5.1b}
# $$
#
# a stride-$s$ convolution is $s^2$ stride-1 convolutions of the phases, each by the offsets
# that land on it.  `im2col` and `col2im` use it: a phase shifted by d rows is one
# contiguous slice, where the plain strided view copies rows Wo numbers long.

# %%
x6 = rng.standard_normal((1, 1, 6, 6))
w3 = rng.standard_normal((1, 1, 3, 3))
y_phases = np.zeros((3, 3))
for i in range(3):
    d_i, r_i = divmod(i - 1, 2)                         # i - p = s d + r, s = 2, p = 1
    for j in range(3):
        d_j, r_j = divmod(j - 1, 2)
        phase = np.pad(x6[0, 0, r_i::2, r_j::2], 1)     # 3 x 3 phase, zero border for d = -1
        y_phases += w3[0, 0, i, j] * phase[1 + d_i:4 + d_i, 1 + d_j:4 + d_j]
y_strided = F.conv2d(md.tensor(x6), md.tensor(w3), None, 2, 1).numpy()[0, 0]
assert np.abs(y_phases - y_strided).max() < 1e-12, "(5.1b)"
print("(5.1b): the stride-2 convolution equals the sum over the input's four phases")

# %% [markdown]
# ## 2. The convolution's gradient
#
# $Y = W\,\mathrm{cols}$ is a matrix product, so lesson 00's rule for `a @ b` gives, with
# $G = \partial L / \partial Y$ (shape $(O, N H_o W_o)$):
#
# $$
# \frac{\partial L}{\partial W} = G\, \mathrm{cols}^\top
# \tag{5.2}
# $$
#
# $$
# \frac{\partial L}{\partial\, \mathrm{cols}} = W^\top G
# \tag{5.3}
# $$
#
# and cols is a copy of pixels of $x$, so each pixel collects the gradient of every column
# entry it was copied into — col2im, the *adjoint* of im2col:
#
# $$
# \frac{\partial L}{\partial x} = \mathrm{col2im}\Big(\frac{\partial L}{\partial\, \mathrm{cols}}\Big),
# \qquad
# \langle \mathrm{im2col}(x), C \rangle = \langle x, \mathrm{col2im}(C) \rangle
# \text{ for all } x, C .
# \tag{5.4}
# $$
#
# col2im adds the slice for kernel offset $(i, j)$ onto the sub-grid `xpad[:, :, i::s, j::s]`:
# $k_h k_w$ additions of whole arrays.  The bias gradient is $G$ summed over $(n, a, b)$.
# Checks: the adjoint identity (5.4) for random $x$ and $C$, then the whole backward against
# central differences (lesson 00, (0.4)).

# %%
xs = rng.standard_normal((2, 3, 5, 4))
c_any = rng.standard_normal((3 * 9, 2 * 3 * 2))
cols_x, _ = F.im2col(xs, 3, stride=2, padding=1)
lhs = (backend.to_host(cols_x) * c_any).sum()
rhs = (xs * backend.to_host(F.col2im(backend.to_device(c_any), xs.shape, 3, 2, 1))).sum()
assert abs(lhs - rhs) < 1e-9 * abs(lhs), "(5.4): col2im is the adjoint of im2col"
print(f"(5.4): <im2col(x), C> = {lhs:.6f} = <x, col2im(C)> = {rhs:.6f}")

xg = md.tensor(rng.standard_normal((2, 4, 5, 5)), requires_grad=True)
wg = md.tensor(rng.standard_normal((4, 2, 3, 3)), requires_grad=True)
bg = md.tensor(rng.standard_normal(4), requires_grad=True)
for stride, padding, groups in ([(1, 1, 1), (2, 1, 2)] if args.quick else
                                [(1, 1, 1), (2, 1, 2), (2, 0, 1), (1, 0, 2)]):
    wk = wg if groups == 2 else md.tensor(rng.standard_normal((4, 4, 3, 3)), requires_grad=True)
    assert gradcheck(lambda a, w, b: F.conv2d(a, w, b, stride, padding, groups), xg, wk, bg), \
        "(5.2)-(5.4)"
print("(5.2)-(5.4): conv2d's backward agrees with central differences "
      "(stride 1 and 2, padding 0 and 1, groups)")

# %% [markdown]
# At stride 1, $\mathrm{col2im}(W^\top G)$ is itself a convolution.  Output pixel $(a, b)$ of
# channel $o$ read input pixel $(a + i - p, b + j - p)$ with weight $w[o, c, i, j]$; turned
# around, input pixel $(u, v)$ of channel $c$ receives $G[o, u - i + p, v - j + p]\, w[o, c, i, j]$.
# Substitute $i' = k_h - 1 - i$, $j' = k_w - 1 - j$:
#
# $$
# \frac{\partial L}{\partial x}[c, u, v] = \sum_{o, i', j'} w'[c, o, i', j']\;
#     G_{\text{pad}}[o, u + i', v + j'],
# \qquad
# w'[c, o, i', j'] = w[o, c, k_h - 1 - i', k_w - 1 - j'] ,
# \tag{5.4b}
# $$
#
# with $G$ padded by $p' = k - 1 - p$: the convolution of $G$ with the kernel *flipped* in
# space and *transposed* in channels.  conv2d computes every 'same' input gradient this way:
# the convolution's im2col *copies* $k_h k_w$ shifted arrays where col2im would *add* as many,
# and copies are the cheaper.

# %%
gx = rng.standard_normal((2, 6, 5, 4))          # C = 6 input channels
gw = rng.standard_normal((3, 6, 3, 3))          # O = 3 output channels
gG = rng.standard_normal((2, 3, 5, 4))          # dL/dy for padding 1 (same size as x)
g_cols = backend.to_device(gw.reshape(3, -1).T @ gG.transpose(1, 0, 2, 3).reshape(3, -1))
dx_col2im = backend.to_host(F.col2im(g_cols, gx.shape, 3, 1, 1))        # (5.3)-(5.4)
w_flipped = gw[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).copy()
dx_flipped = F.conv2d(md.tensor(gG), md.tensor(w_flipped), None, 1, 3 - 1 - 1).numpy()
assert np.abs(dx_col2im - dx_flipped).max() < 1e-12, "(5.4b)"
print("(5.4b): col2im(W^T G) equals G convolved with the flipped, transposed kernel")

# %% [markdown]
# The weight gradient can be read off the *same* columns.  (5.2) says
# $\frac{\partial L}{\partial w}[o, c, i, j] = \sum_{n, a, b} G[o, a, b]\, x_{\text{pad}}[c, a + i, b + j]$;
# with $u = a + i - p$ the sum runs over input pixels, and with $i' = k_h - 1 - i$
#
# $$
# \frac{\partial L}{\partial w}[o, c, k_h - 1 - i', k_w - 1 - j']
#   = \sum_{n, u, v} G_{\text{pad}}[o, u + i', v + j']\; x[c, u, v]
# \tag{5.4c}
# $$
#
# where $G_{\text{pad}}$ is $G$ padded by $k - 1 - p$, as in (5.4b).
# $G_{\text{pad}}[o, u + i', v + j']$ is row $(o, i', j')$ of $\mathrm{im2col}(G_{\text{pad}})$,
# so $dW$ is that column matrix times $x^\top$: the backward pass builds the columns of $G$
# once and gets $dx$ *and* $dW$ from them, never rebuilding the input's columns.

# %%
gcols_pad, _ = F.im2col(gG, 3, 1, 3 - 1 - 1)                  # (O kh kw, N H W)
x_pixels = gx.transpose(1, 0, 2, 3).reshape(6, -1)            # (C, N H W)
dw_flipped = (backend.to_host(gcols_pad) @ x_pixels.T).reshape(3, 3, 3, 6)  # (o, i', j', c)
dw_from_gcols = dw_flipped[:, ::-1, ::-1, :].transpose(0, 3, 1, 2)
x_pad = np.pad(gx, ((0, 0), (0, 0), (1, 1), (1, 1)))
windows = np.lib.stride_tricks.sliding_window_view(x_pad, (5, 4), axis=(2, 3))
dw_direct = np.einsum("noab,ncijab->ocij", gG, windows)     # (5.2): xpad[c, a + i, b + j]
assert np.abs(dw_from_gcols - dw_direct).max() < 1e-10, "(5.4c)"
print("(5.4c): G's columns times x^T give the weight gradient of (5.2)")

# %% [markdown]
# ## 3. Group norm
#
# Group norm splits the $C$ channels of each image into $G$ groups and normalizes each group
# (its channels and pixels together, $m$ numbers) to zero mean and unit variance, then scales
# and shifts each channel:
#
# $$
# \mu = \tfrac{1}{m}\sum_k x_k, \quad
# \sigma^2 = \tfrac{1}{m}\sum_k (x_k - \mu)^2, \quad
# r = \frac{1}{\sqrt{\sigma^2 + \varepsilon}}, \qquad
# \hat x = (x - \mu)\, r, \quad y = \gamma \hat x + \beta .
# \tag{5.5}
# $$
#
# Differentiating $\hat x_i = (x_i - \mu) r$, with $\partial\mu / \partial x_k = 1/m$ and
# $\partial r / \partial x_k = -r^3 (x_k - \mu)/m$:
# $\partial \hat x_i / \partial x_k = r\,(\delta_{ik} - \tfrac{1}{m} - \hat x_i \hat x_k / m)$.
# Summing against $g_h = \gamma g = \partial L / \partial \hat x$:
#
# $$
# \frac{\partial L}{\partial x} = r\big(g_h - \mathrm{mean}(g_h) - \hat x\, \mathrm{mean}(g_h \hat x)\big),
# \qquad
# \frac{\partial L}{\partial \gamma} = \sum g\, \hat x, \qquad
# \frac{\partial L}{\partial \beta} = \sum g .
# \tag{5.6}
# $$
#
# Two group means of the incoming gradient, and the rest is elementwise.  Checks: (5.5) by its
# moments; (5.6) written out here, central differences, and the chain of primitive operations
# it replaces.

# %%
xn = md.tensor(rng.standard_normal((2, 4, 3, 3)) * 3 + 2, requires_grad=True)
gamma = md.tensor(rng.standard_normal(4), requires_grad=True)
beta = md.tensor(rng.standard_normal(4), requires_grad=True)
yn = host(F.group_norm(xn, 2)).reshape(2, 2, -1)
assert np.allclose(yn.mean(-1), 0, atol=1e-12) and np.allclose(yn.var(-1), 1, atol=1e-3), "(5.5)"
print("(5.5): every group has mean 0 and variance 1 (up to eps)")

g = rng.standard_normal(xn.shape)
out = F.group_norm(xn, 2, gamma, beta)
out.backward(g)
xv = host(xn).reshape(2, 2, -1)
mu, var = xv.mean(-1, keepdims=True), xv.var(-1, keepdims=True)
r = 1 / np.sqrt(var + 1e-5)
xhat = (xv - mu) * r
gh = (g * host(gamma).reshape(1, 4, 1, 1)).reshape(2, 2, -1)
by_formula = r * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))
assert np.allclose(backend.to_host(xn.grad), by_formula.reshape(xn.shape)), "(5.6)"
assert np.allclose(backend.to_host(gamma.grad),
                   (g * xhat.reshape(xn.shape)).sum(axis=(0, 2, 3)))
assert gradcheck(lambda a, w, b: F.group_norm(a, 2, w, b), xn, gamma, beta)


def group_norm_from_primitives(a):  # the chain of nodes that (5.6) replaces
    grouped = a.reshape(2, 2, -1)
    centered = grouped - grouped.mean(axis=-1, keepdims=True)
    return (centered / (centered.var(axis=-1, keepdims=True) + 1e-5).sqrt()).reshape(a.shape)


assert np.allclose(host(group_norm_from_primitives(xn)), host(F.group_norm(xn, 2)))
print("(5.6): the fused backward equals the derived formula, finite differences, "
      "and the chain of primitive operations")

# %% [markdown]
# ## 4. Attention
#
# A sequence of $L$ tokens, each a vector of width $d$, asks "which other tokens matter to
# me?":
#
# $$
# S = \frac{Q K^\top}{\sqrt{d}} \in \mathbb{R}^{L_q \times L_k}, \qquad
# P = \mathrm{softmax}(S) \text{ by rows}, \qquad
# O = P V \in \mathbb{R}^{L_q \times d_v}
# \tag{5.7}
# $$
#
# with $Q \in \mathbb{R}^{L_q \times d}$, $K \in \mathbb{R}^{L_k \times d}$,
# $V \in \mathbb{R}^{L_k \times d_v}$; each row of $P$ is $\ge 0$ and sums to 1.  The
# $1/\sqrt{d}$ keeps the scores' variance near 1 when $q$ and $k$ have unit-variance entries,
# so the softmax does not saturate.  Backward, with $G = \partial L / \partial O$:
#
# $$
# dV = P^\top G, \quad dP = G V^\top, \quad
# dS = P \odot \big(dP - \mathrm{rowsum}(dP \odot P)\big), \quad
# dQ = \frac{dS\, K}{\sqrt{d}}, \quad dK = \frac{dS^\top Q}{\sqrt{d}} .
# \tag{5.8}
# $$
#
# Multi-head attention splits the width $E$ into $h$ heads of $d = E/h$, reshapes
# $(B, L, E) \to (B, h, L, d)$ and runs (5.7) with $(B, h)$ as batch axes: no loop over heads.
# For cross-attention $Q$ comes from one sequence and $K, V$ from another, of another length.
# Checks: the forward against softmax(Q K^T / sqrt(d)) V built from primitive operations,
# the backward against central differences.

# %%
B, H, Lq, Lk, D = 2, 4, 5, 7, 8
q = md.tensor(rng.standard_normal((B, H, Lq, D)), requires_grad=True)
k = md.tensor(rng.standard_normal((B, H, Lk, D)), requires_grad=True)
v = md.tensor(rng.standard_normal((B, H, Lk, D)), requires_grad=True)
P = backend.to_host(F.attention_weights(q, k))
print(f"Q {q.shape}, K {k.shape}, V {v.shape} -> P {P.shape} -> O "
      f"{F.scaled_dot_product_attention(q, k, v).shape}")
assert (P >= 0).all() and np.allclose(P.sum(-1), 1)
causal = md.tensor(np.tril(np.ones((Lq, Lk), dtype=bool)))
Pc = backend.to_host(F.attention_weights(q, k, causal))
assert (Pc[..., ~np.tril(np.ones((Lq, Lk), dtype=bool))] == 0).all()
print("(5.7): weights are non-negative, rows sum to one, a causal mask zeroes the future")

small = [md.tensor(rng.standard_normal(s), requires_grad=True)
         for s in [(1, 2, 3, 2), (1, 2, 4, 2), (1, 2, 4, 3)]]
assert gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c), *small), "(5.8)"
via_primitives = md.softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(D), axis=-1) @ v
assert np.allclose(host(via_primitives), host(F.scaled_dot_product_attention(q, k, v))), "(5.7)"
print("(5.8): the fused backward agrees with central differences; the forward equals "
      "softmax(Q K^T / sqrt(d)) V built from primitives")

mha = nn.MultiheadAttention(8, 4, context_dim=6)
tokens, context = md.tensor(rng.standard_normal((2, 5, 8))), md.tensor(
    rng.standard_normal((2, 9, 6)))
assert mha(tokens, context).shape == (2, 5, 8)
print("cross-attention: 5 queries of width 8 attend to 9 context tokens of width 6")

# %% [markdown]
# ## 5. Modules and optimizers
#
# A `Module` finds its parameters by attribute, names them by their path ("0.weight"), saves
# them to `.npz` and loads them back strictly.  Layers start as PyTorch's do: weights drawn
# from $\mathcal{U}(\pm 1/\sqrt{n_{\text{in}}})$, with $n_{\text{in}}$ the fan-in.
# A few AdamW steps with warm-up + cosine learning rate and an EMA fit a tiny conv net.

# %%
md.set_default_dtype("float32")
model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(),
                      nn.Conv2d(8, 1, 3, padding=1))
print("parameters:", [name for name, _ in model.named_parameters()])
data = md.tensor(rng.standard_normal((8, 1, 6, 6)).astype("float32"))
target = md.tensor(host(data)[:, :, ::-1].copy())  # learn to flip images upside down
steps = 30 if args.quick else 200
opt = optim.AdamW(model.parameters(), lr=3e-2, weight_decay=1e-4)
schedule = optim.WarmupCosine(opt, total_steps=steps, warmup_steps=5)
ema = optim.EMA(model, decay=0.9)
losses = []
for _ in range(steps):
    opt.zero_grad()
    loss = F.mse_loss(model(data), target)
    loss.backward()
    optim.clip_grad_norm(model.parameters(), 1.0)
    opt.step()
    schedule.step()
    ema.update()
    losses.append(loss.item())
assert losses[-1] < 0.7 * losses[0]
with ema.swapped():
    ema_loss = F.mse_loss(model(data), target).item()
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps; with EMA weights {ema_loss:.3f}")

# %%
plt = pyplot()   # None without matplotlib: the figures are then skipped
if plt is not None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].imshow(backend.to_host(cols), cmap="viridis")
    axes[0].set(title="im2col of a 4x4 image (3x3 kernel)", xlabel="window (a, b)",
                ylabel="(i, j) in the kernel")
    axes[1].imshow(Pc[0, 0], cmap="magma", vmin=0)
    axes[1].set(title="causal attention weights", xlabel="key", ylabel="query")
    axes[2].plot(losses)
    axes[2].set(title="tiny conv net, AdamW + cosine", xlabel="step", ylabel="MSE",
                yscale="log")
    fig.tight_layout()
    fig.savefig(out_dir / "05_layers.png", dpi=100)
    plt.close(fig)
    print(f"figure written to {out_dir / '05_layers.png'}")

# %% [markdown]
# ## Summary
#
# * (5.1) im2col turns a convolution into one GEMM; (5.1b) a strided one is a sum of
#   stride-1 ones over the input's phases; (5.2)-(5.4) its gradients are two more
#   GEMMs and col2im, the adjoint of im2col; (5.4b)-(5.4c) at stride 1 both gradients come
#   from the columns of the padded output gradient, $dx$ as a convolution by the flipped
#   kernel.
# * (5.5)-(5.6) group norm's backward is
#   $r\,(g_h - \mathrm{mean}(g_h) - \hat x\, \mathrm{mean}(g_h \hat x))$.
# * (5.7)-(5.8) attention is $\mathrm{softmax}(Q K^\top / \sqrt{d})\, V$; heads are a batch axis.
#
# `python -m minidiff.bench.layers` times these layers against PyTorch.  Next: the U-Net.

# %%
print("lesson 05: all checks passed")
