"""Convolution as one matrix product: im2col, its adjoint col2im, and the gradients (lesson 05).

A 2-D convolution (really a cross-correlation, as in every deep-learning library) of an input
x of shape (N, C, H, W) with a weight w of shape (O, C, kh, kw) is

    y[n, o, a, b] = sum_{c, i, j} w[o, c, i, j] * xp[n, c, s a + i, s b + j]   (+ bias[o])

where xp is x zero-padded by p on each side and s is the stride.  Gather every window of xp
into a column -- rows indexed by (c, i, j), columns by (n, a, b) -- and the sum is a matrix
product:

    cols = im2col(xp)                  (C kh kw, N Ho Wo)
    Y    = W cols,  W = w.reshape(O, C kh kw)                                  (O, N Ho Wo)

The gradient follows from the matrix product (lesson 00): with G = dL/dY,

    dL/dW    = G cols^T                (one GEMM)
    dL/dcols = W^T G                   (one GEMM)
    dL/dx    = col2im(dL/dcols)        (the adjoint of im2col: each column entry goes back to
                                        the pixel it was copied from, and pixels that sat in
                                        several windows *sum* their contributions)

col2im is a scatter-add, but over the kh*kw kernel offsets only: for each (i, j) the slice
cols[:, i, j] lands on the strided sub-grid xp[:, :, i::s, j::s] -- kh*kw array additions.

Layout.  cols is written as (C, kh, kw, N, Ho, Wo), contiguous, from one strided *view* of
the padded input (``as_strided``: no Python loop over pixels or batch items), so the GEMM is
a single (O x CKK) @ (CKK x NHoWo) product that BLAS runs at full speed, and dW^T = cols G^T
uses G transposed *without a copy* (BLAS reads it as a transposed operand).  Groups split the
channels into g independent convolutions: the same product batched over a leading g axis.

Stride 1 (every 3x3 convolution of the U-Net) takes a faster road, ``flat_pad`` and
``flat_windows``: each channel becomes one long row in which neighbouring image rows share
their zero padding, so a kernel offset (i, j) is a plain *shift* of that row.  im2col is then
kh*kw long contiguous copies instead of copies of rows only Wo numbers long.  A 1x1
convolution needs no columns at all: y[n] = W x[n], one product per image on the NCHW array.

What the backward pass keeps is the input alone (the graph holds it anyway): the columns,
kh*kw times larger, are built a few images at a time (``CHUNK_BYTES``) in a scratch buffer
(``_workspace``) shared by every convolution.  The backward pass needs no input columns at
all: at stride 1, col2im(W^T G) is the convolution of G (padded by k - 1 - p) with the
flipped, transposed kernel (lesson 05, eq. 5.4b), and dW is the same columns of G times the
input laid on their grid (eq. 5.4c).  One pass over G's columns gives both, with kh*kw
copies instead of kh*kw scatter-adds.

``conv_transpose2d`` is the adjoint of ``conv2d`` with respect to its input, so its forward is
col2im(W^T x) and its backward uses im2col: the two helpers serve both.
"""
from minidiff import backend
from minidiff.nn.functional import _workspace
from minidiff.nn.functional._reduce import row_sums
from minidiff.ops._inputs import as_tensors
from minidiff.tensor import Tensor

__all__ = ["conv2d", "conv_transpose2d", "im2col", "col2im", "flat_pad", "flat_windows",
           "flat_ok", "conv_output_size"]


def _pair(v):
    return (int(v), int(v)) if not isinstance(v, (tuple, list)) else (int(v[0]), int(v[1]))


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """floor((size + 2 padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x, kernel, stride=1, padding=0):
    """(N, C, H, W) array -> cols of shape (C*kh*kw, N*Ho*Wo), with (Ho, Wo).

    cols[(c, i, j), (n, a, b)] = xpad[n, c, s a + i, s b + j].  Built from one strided view of
    the padded input and one copy.
    """
    xp = backend.array_module_of(x)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise ValueError(f"conv: kernel {kh}x{kw} does not fit the padded input {h}x{w} "
                         f"(padding {ph},{pw})")
    if ph or pw:
        padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        padded[:, :, ph:ph + h, pw:pw + w] = x
    else:
        padded = xp.ascontiguousarray(x)
    if kh == kw == sh == sw == 1 and ph == pw == 0:  # 1x1: the columns are the pixels
        return padded.transpose(1, 0, 2, 3).reshape(c, n * h * w), (ho, wo)
    s_n, s_c, s_h, s_w = padded.strides
    windows = xp.lib.stride_tricks.as_strided(
        padded, shape=(c, kh, kw, n, ho, wo),
        strides=(s_c, s_h, s_w, s_n, sh * s_h, sw * s_w))
    cols = _workspace.pooled("im2col.cols", (c, kh, kw, n, ho, wo), x.dtype, xp)
    cols[...] = windows
    return cols.reshape(c * kh * kw, n * ho * wo), (ho, wo)


def col2im(cols, shape, kernel, stride=1, padding=0):
    """The adjoint of ``im2col``: (C*kh*kw, N*Ho*Wo) -> (N, C, H, W), overlaps summed.

    One strided add per kernel offset (i, j): kh*kw array operations, no loop over pixels.
    """
    xp = backend.array_module_of(cols)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    n, c, h, w = shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    if kh == kw == sh == sw == 1 and ph == pw == 0:
        # a copy, never a view: with N = 1 the transpose is free and the view would alias
        # the caller's (possibly reused) buffer
        return cols.reshape(c, n, h, w).transpose(1, 0, 2, 3).copy()
    acc = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            acc[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += cols[:, i, j]
    inner = acc[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(inner)


def _flat_layout(shape, kh, kw, ph, pw):
    """Geometry of the stride-1 "flat" layout: (Hq, Wq, Q, base, length).

    Rows have pitch Wq = W + pw and images pitch Hq = H + ph: neighbouring rows (and images)
    *share* their zero padding, because the pw zeros after one row are also the pw zeros
    before the next.  Pixel (n, y, x) sits at base + (n Hq + y) Wq + x with base = ph Wq + pw.
    """
    n, _, h, w = shape
    hq, wq = h + ph, w + pw
    q = n * hq * wq
    return hq, wq, q, ph * wq + pw, q + (kh - 1) * wq + kw - 1


def flat_ok(kernel, stride, padding) -> bool:
    """The flat layout needs stride 1 and padding at most kernel - 1 (so Ho <= Hq)."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    return sh == sw == 1 and ph <= kh - 1 and pw <= kw - 1


def flat_pad(x, kernel, padding=0, tag: str = "conv.flat"):
    """(N, C, H, W) -> (C, length): each channel one long row of the ``_flat_layout`` grid,
    the pixels in place and every gap zero.

    A reused scratch buffer (``_workspace`` ``tag``), valid until the next call with that tag:
    conv2d rebuilds it in its backward pass from the input (which the graph keeps anyway)
    rather than keep a second copy.
    """
    xp = backend.array_module_of(x)
    (kh, kw), (ph, pw) = _pair(kernel), _pair(padding)
    n, c, h, w = x.shape
    hq, wq, q, base, length = _flat_layout(x.shape, kh, kw, ph, pw)
    flat = _workspace.buffer(tag, (c, length), x.dtype, xp)
    flat[:, :base] = 0
    grid = flat[:, base:base + q].reshape(c, n, hq, wq)
    grid[:, :, :h, :w] = x.transpose(1, 0, 2, 3)
    grid[:, :, :h, w:] = 0
    grid[:, :, h:, :] = 0
    flat[:, base + q:] = 0
    return flat


def flat_windows(flat, kernel, row_pitch: int, q: int):
    """The (C, kh, kw, Q) view of ``flat`` whose element (c, i, j, q) is
    flat[c, q + i Wq + j]: the window entry (i, j) of output position q, a pure shift.

    Copying it is stride-1 im2col: (C kh kw, Q) columns, Q = N Hq Wq, built from kh*kw long
    contiguous copies.  The few positions q whose window straddles a row or image border are
    computed too and thrown away: a (Hq Wq)/(Ho Wo) overhead in the GEMMs (1.07 at 28x28,
    1.3 at 7x7) that the contiguous copies repay many times over."""
    xp = backend.array_module_of(flat)
    (kh, kw) = _pair(kernel)
    s_c, s_e = flat.strides
    return xp.lib.stride_tricks.as_strided(flat, shape=(flat.shape[0], kh, kw, q),
                                           strides=(s_c, row_pitch * s_e, s_e, s_e))


#: bytes of im2col columns (or of their gradient) built at a time: whole images, about this
#: many bytes' worth, so that the scratch memory is a few images' columns and not the whole
#: batch's (187 MB for 96 channels at 28x28, batch 64), and so that a chunk is still in cache
#: when the GEMM reads it.  On the 2-core machine copy + GEMM of a 32-channel 28x28 layer
#: took 7.9 ms in 4 MiB chunks, 12-14 ms in 16-64 MiB ones; below 2 MiB the GEMMs get small.
CHUNK_BYTES = 4 * 2 ** 20


def _images_per_chunk(bytes_per_image: int, n: int) -> int:
    return max(1, min(n, CHUNK_BYTES // max(1, bytes_per_image)))


def _flat_columns(x, kernel, padding):
    """Stride-1 im2col of the array x (N, C, H, W) in chunks of whole images: yields
    (n0, k, cols) with cols = the (C kh kw, k Hq Wq) columns of images n0 .. n0+k-1, whose
    column j is output position start + j of the ``_flat_layout`` grid (start = n0 Hq Wq).
    cols lives in a scratch buffer, overwritten by the next chunk."""
    xp = backend.array_module_of(x)
    (kh, kw), (ph, pw) = _pair(kernel), _pair(padding)
    n, c = x.shape[:2]
    hq, wq, q, _, _ = _flat_layout(x.shape, kh, kw, ph, pw)
    windows = flat_windows(flat_pad(x, (kh, kw), (ph, pw)), (kh, kw), wq, q)
    per = _images_per_chunk(c * kh * kw * hq * wq * x.itemsize, n)
    for n0 in range(0, n, per):
        k = min(per, n - n0)
        start, stop = n0 * hq * wq, (n0 + k) * hq * wq
        cols = _workspace.buffer("conv.columns", (c, kh, kw, stop - start), x.dtype, xp)
        cols[...] = windows[..., start:stop]
        yield n0, k, cols.reshape(c * kh * kw, stop - start)


def _flat_conv(x, w_g, bias, kernel, padding):
    """Stride-1 convolution of the array x (N, C, H, W) by w_g (groups, O/g, C/g kh kw):
    y = W cols, one GEMM per chunk of ``_flat_columns``.  A new array (N, O, Ho, Wo)."""
    xp = backend.array_module_of(x)
    (kh, kw), (ph, pw) = _pair(kernel), _pair(padding)
    n, c, h, w = x.shape
    groups, og, _ = w_g.shape
    o = groups * og
    ho, wo = conv_output_size(h, kh, 1, ph), conv_output_size(w, kw, 1, pw)
    hq, wq, _, _, _ = _flat_layout(x.shape, kh, kw, ph, pw)
    y = xp.empty((n, o, ho, wo), dtype=x.dtype)
    for n0, k, cols in _flat_columns(x, (kh, kw), (ph, pw)):
        out = xp.matmul(w_g, cols.reshape(groups, -1, cols.shape[1]), out=_workspace.buffer(
            "conv.out", (groups, og, cols.shape[1]), x.dtype, xp)).reshape(o, k, hq, wq)
        if bias is not None:
            out += bias.reshape(o, 1, 1, 1)
        y[n0:n0 + k] = out[:, :, :ho, :wo].transpose(1, 0, 2, 3)
    return y


def _flat_backward(g, x, weight, padding, groups: int):
    """(dx, dW) of a stride-1 convolution (None where no gradient is needed), from one pass
    over the columns of G padded by k - 1 - p (lesson 05, eq. 5.4b-5.4c).

    dx is not col2im(W^T G) but what that equals at stride 1: the convolution of G with the
    kernel flipped in space and transposed in channels, w'[c, o, i, j] = w[o, c, k-1-i, k-1-j]
    (eq. 5.4b).  Its im2col *copies* kh*kw shifted arrays where col2im would *add* as many.

    dW comes from the same columns: dW[o, c, k-1-i, k-1-j] = sum_q gcols[(o, i, j), q] x[c, q]
    (eq. 5.4c), x laid on the same grid (gaps zero), so that the input's own columns are
    never rebuilt.  The product runs as gcols x^T, (O kh kw x chunk) @ (chunk x C): the
    orientation OpenBLAS ran 1.5-2x faster than x cols^T or kh*kw products with K = N H W.
    """
    if not (x.requires_grad or weight.requires_grad):
        return None, None
    xp = backend.array_module_of(g)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    (ph, pw) = padding
    w_flipped = weight.data.reshape(groups, og, cg, kh, kw)[..., ::-1, ::-1]
    w_flipped = w_flipped.transpose(0, 2, 1, 3, 4).reshape(groups, cg, og * kh * kw)
    # G padded by k-1-p lies on x's grid: Ho + (k-1-p) = H + p rows of pitch W + p
    hq, wq, q, base, _ = _flat_layout(x.shape, kh, kw, ph, pw)
    if weight.requires_grad:
        x_grid = flat_pad(x.data, (kh, kw), padding, tag="conv.flat_input")[:, base:base + q]
        x_grid = x_grid.reshape(groups, cg, q)
        dw_flipped = xp.zeros((groups, og * kh * kw, cg), dtype=g.dtype)
    dx = xp.empty(x.shape, dtype=g.dtype) if x.requires_grad else None
    for n0, k, gcols in _flat_columns(g, (kh, kw), (kh - 1 - ph, kw - 1 - pw)):
        gcols = gcols.reshape(groups, og * kh * kw, gcols.shape[1])
        if x.requires_grad:
            out = xp.matmul(w_flipped, gcols, out=_workspace.buffer(
                "conv.out", (groups, cg, gcols.shape[2]), g.dtype, xp)).reshape(c, k, hq, wq)
            dx[n0:n0 + k] = out[:, :, :h, :w].transpose(1, 0, 2, 3)
        if weight.requires_grad:
            start = n0 * hq * wq
            dw_flipped += xp.matmul(gcols, x_grid[:, :, start:start + gcols.shape[2]]
                                    .transpose(0, 2, 1))
    dw = None
    if weight.requires_grad:
        dw = dw_flipped.reshape(groups, og, kh, kw, cg)[:, :, ::-1, ::-1]
        dw = dw.transpose(0, 1, 4, 2, 3).reshape(weight.shape)
    return dx, dw


def conv2d(x, weight, bias=None, stride=1, padding=0, groups: int = 1) -> Tensor:
    """y = W im2col(x) + b, reshaped to (N, O, Ho, Wo).  Weight (O, C/groups, kh, kw).

    Backward: dW = G cols^T, dx = col2im(W^T G), db = sum of G over (N, Ho, Wo).  Three roads
    compute it: a 1x1 kernel (stride 1, no padding) needs no im2col at all, y[n] = W x[n] per
    image on the NCHW data itself; other stride-1 kernels take the flat layout, whose dx is
    the equal convolution of G by the flipped kernel (eq. 5.4b); strided ones use im2col and
    col2im as written.
    """
    parents = as_tensors("conv2d", x, weight, *([bias] if bias is not None else []))
    x, weight = parents[0], parents[1]
    xp = backend.array_module_of(x.data)
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d: expected x (N, C, H, W) and weight (O, C/groups, kh, kw), "
                         f"got {x.shape} and {weight.shape}")
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if c % groups or o % groups or cg * groups != c:
        raise ValueError(f"conv2d: input has {c} channels, weight {weight.shape} with "
                         f"groups={groups} expects {cg * groups}")
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    pointwise = kh == kw == sh == sw == 1 and ph == pw == 0
    flat = flat_ok((kh, kw), stride, padding) and not pointwise
    w_g = weight.data.reshape(groups, o // groups, cg * kh * kw)
    if pointwise:  # 1x1: y[n] = W x[n], one GEMM per image straight from NCHW, no copies
        y = xp.matmul(w_g, x.data.reshape(n, groups, cg, h * w)).reshape(n, o, h, w)
        if bias is not None:
            y += bias.data.reshape(1, o, 1, 1)
    elif flat:  # stride 1: the shifted-rows layout (flat_windows), a few images at a time
        y = _flat_conv(x.data, w_g, None if bias is None else bias.data, (kh, kw), (ph, pw))
    else:
        q = n * ho * wo
        cols, _ = im2col(x.data, (kh, kw), stride, padding)
        cols_g = cols.reshape(groups, cg * kh * kw, q)
        out = xp.matmul(w_g, cols_g, out=_workspace.buffer(
            "conv.out", (groups, o // groups, q), cols.dtype, xp)).reshape(o, q)
        if bias is not None:
            out += bias.data.reshape(o, 1)
        # .copy(), not ascontiguousarray: with N = 1 the latter would return a view of the
        # reused ``conv.out`` buffer, and the next conv of this shape would overwrite y
        y = out.reshape(o, n, ho, wo).transpose(1, 0, 2, 3).copy()

    def backward(g):
        grads = [None, None]
        if pointwise:
            g4 = g.reshape(n, groups, o // groups, h * w)
            if weight.requires_grad:   # sum_n G[n] x[n]^T
                x4 = x.data.reshape(n, groups, cg, h * w)
                grads[1] = xp.matmul(g4, x4.transpose(0, 1, 3, 2)).sum(axis=0).reshape(
                    weight.shape)
            if x.requires_grad:        # W^T G[n]
                grads[0] = xp.matmul(w_g.transpose(0, 2, 1), g4).reshape(x.shape)
        elif flat:
            grads[:2] = _flat_backward(g, x, weight, (ph, pw), groups)
        else:
            g_t = xp.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(groups, o // groups, q)
            if weight.requires_grad:
                dw_t = xp.matmul(cols_g, g_t.transpose(0, 2, 1))   # the faster orientation
                grads[1] = dw_t.transpose(0, 2, 1).reshape(weight.shape)
            if x.requires_grad:
                dcols = xp.matmul(w_g.transpose(0, 2, 1), g_t, out=_workspace.buffer(
                    "conv.column_grad", (groups, cg * kh * kw, q), g.dtype, xp))
                grads[0] = col2im(dcols, x.shape, (kh, kw), stride, padding)
        if bias is not None:
            grads.append(row_sums(g.reshape(n, o, -1)).sum(axis=0))
        return grads
    return Tensor._make(y, tuple(parents), backward, "conv2d")


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0) -> Tensor:
    """The adjoint of conv2d in x: y = col2im(W^T x) (+ b).  Weight (C_in, C_out, kh, kw).

    Output size (H - 1) s - 2p + kh.  Backward: with gcols = im2col(G),
    dx = W gcols, dW = x gcols^T (both one GEMM).
    """
    parents = as_tensors("conv_transpose2d", x, weight, *([bias] if bias is not None else []))
    x, weight = parents[0], parents[1]
    xp = backend.array_module_of(x.data)
    n, c, h, w = x.shape
    c_in, o, kh, kw = weight.shape
    if c_in != c:
        raise ValueError(f"conv_transpose2d: input has {c} channels, weight {weight.shape}")
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    out_h, out_w = (h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw
    w_mat = weight.data.reshape(c, o * kh * kw)
    x_mat = xp.ascontiguousarray(x.data.transpose(1, 0, 2, 3)).reshape(c, n * h * w)
    y = col2im(w_mat.T @ x_mat, (n, o, out_h, out_w), (kh, kw), stride, padding)
    if bias is not None:
        y += bias.data.reshape(1, o, 1, 1)

    def backward(g):
        gcols, _ = im2col(g, (kh, kw), stride, padding)  # (o kh kw, n h w)
        grads = [None, None]
        if x.requires_grad:
            grads[0] = xp.ascontiguousarray((w_mat @ gcols).reshape(c, n, h, w)
                                            .transpose(1, 0, 2, 3))
        if weight.requires_grad:
            grads[1] = (x_mat @ gcols.T).reshape(weight.shape)
        if bias is not None:
            grads.append(row_sums(g.reshape(n, o, -1)).sum(axis=0))
        return grads
    return Tensor._make(y, tuple(parents), backward, "conv_transpose2d")
