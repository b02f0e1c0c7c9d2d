"""Convolution as one matrix product: im2col, its adjoint col2im, and the gradients (lesson 05).

A 2-D convolution (really a cross-correlation, as in every deep-learning library) of an input
x of shape (N, C, H, W) with a weight w of shape (O, C, kh, kw) is

    y[n, o, a, b] = sum_{c, i, j} w[o, c, i, j] * xp[n, c, s a + i, s b + j]   (+ bias[o])

where xp is x zero-padded by p on each side and s is the stride.  Gather every window of xp
into a column -- rows indexed by (c, i, j), columns by (n, a, b) -- and the sum is a matrix
product (eq. 5.1):

    cols = im2col(xp)                  (C kh kw, N Ho Wo)
    Y    = W cols,  W = w.reshape(O, C kh kw)                                  (O, N Ho Wo)

The gradient follows from the matrix product (lesson 00): with G = dL/dY (eq. 5.2-5.4),

    dL/dW    = G cols^T                (one GEMM)
    dL/dcols = W^T G                   (one GEMM)
    dL/dx    = col2im(dL/dcols)        (the adjoint of im2col: each column entry goes back to
                                        the pixel it was copied from, and pixels that sat in
                                        several windows *sum* their contributions)

col2im is a scatter-add, but over the kh*kw kernel offsets only: for each (i, j) the slice
cols[:, i, j] lands on the strided sub-grid xp[:, :, i::s, j::s] -- kh*kw array additions.

Layout.  cols is written as (C, kh, kw, N, Ho, Wo), contiguous, from one strided *view* of
the padded input (``as_strided``: no Python loop over pixels or batch items), so the GEMM is
a single (O x C kh kw) @ (C kh kw x N Ho Wo) product, and dW^T = cols G^T reads G transposed
without a copy (BLAS takes it as a transposed operand).  Groups split the channels into g
independent convolutions: the same product batched over a leading g axis.

This module is that derivation and nothing more: the *reference road*, which takes every
shape (``conv2d_reference``).  The ``conv2d`` the layers call lives beside it, in
``conv_fast`` (nn/functional/conv_fast.py): it sends the shapes a faster road handles -- 1x1
kernels, 'same' convolutions, strided ones whose output grid is the input grid divided by the
stride -- there (the same numbers with fewer and cheaper copies), and every other shape here;
tests/test_conv_roads.py holds the roads to each other.

``conv_transpose2d`` is the adjoint of the convolution with respect to its input, so its forward is
col2im(W^T x) and its backward uses im2col: the two helpers serve both.
"""
from minidiff import backend
from minidiff.nn.functional._reduce import row_sums
from minidiff.ops._inputs import as_tensors
from minidiff.tensor import Tensor

__all__ = ["conv2d_reference", "conv_transpose2d", "im2col", "col2im",
           "conv_output_size"]


def _pair(v):
    return (int(v), int(v)) if not isinstance(v, (tuple, list)) else (int(v[0]), int(v[1]))


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """floor((size + 2 padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x, kernel, stride=1, padding=0):
    """(N, C, H, W) array -> cols of shape (C*kh*kw, N*Ho*Wo), with (Ho, Wo) (eq. 5.1).

    cols[(c, i, j), (n, a, b)] = xpad[n, c, s a + i, s b + j]: one strided view of the padded
    input, copied once.
    """
    xp = backend.array_module_of(x)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise ValueError(f"conv: kernel {kh}x{kw} does not fit the padded input {h}x{w} "
                         f"(padding {ph},{pw})")
    padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    s_n, s_c, s_h, s_w = padded.strides
    windows = xp.lib.stride_tricks.as_strided(
        padded, shape=(c, kh, kw, n, ho, wo),
        strides=(s_c, s_h, s_w, s_n, sh * s_h, sw * s_w))
    return xp.ascontiguousarray(windows).reshape(c * kh * kw, n * ho * wo), (ho, wo)


def col2im(cols, shape, kernel, stride=1, padding=0):
    """The adjoint of ``im2col``: (C*kh*kw, N*Ho*Wo) -> (N, C, H, W), overlaps summed (5.4).

    One add per kernel offset (i, j), onto the strided sub-grid of the padded image that the
    offset read: kh*kw array operations, no loop over pixels.  ``cols`` is left unchanged.
    """
    xp = backend.array_module_of(cols)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    n, c, h, w = shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    acc = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            acc[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += cols[:, i, j]
    return xp.ascontiguousarray(acc[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3))


def _conv_inputs(x, weight, bias, groups: int) -> list:
    """[x, weight(, bias)] as tensors, their shapes checked against each other."""
    parents = as_tensors("conv2d", x, weight, *([bias] if bias is not None else []))
    x, weight = parents[0], parents[1]
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d: expected x (N, C, H, W) and weight (O, C/groups, kh, kw), "
                         f"got {x.shape} and {weight.shape}")
    c, (o, cg) = x.shape[1], weight.shape[:2]
    if c % groups or o % groups or cg * groups != c:
        raise ValueError(f"conv2d: input has {c} channels, weight {weight.shape} with "
                         f"groups={groups} expects {cg * groups}")
    return parents


def conv2d_reference(x, weight, bias=None, stride=1, padding=0, groups: int = 1) -> Tensor:
    """``conv2d`` by im2col, one GEMM and col2im, whatever the shape (eq. 5.1-5.4)."""
    return _reference(_conv_inputs(x, weight, bias, groups), stride, padding, groups)


def _reference(parents, stride, padding, groups: int) -> Tensor:
    x, weight = parents[0], parents[1]
    has_bias = len(parents) == 3
    xp = backend.array_module_of(x.data)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    cols, (ho, wo) = im2col(x.data, (kh, kw), stride, padding)
    q = n * ho * wo
    cols_g = cols.reshape(groups, cg * kh * kw, q)
    w_g = weight.data.reshape(groups, og, cg * kh * kw)
    out = xp.matmul(w_g, cols_g).reshape(o, q)                       # Y = W cols   (5.1)
    if has_bias:
        out += parents[2].data.reshape(o, 1)
    y = xp.ascontiguousarray(out.reshape(o, n, ho, wo).transpose(1, 0, 2, 3))

    def backward(g):
        g_t = xp.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(groups, og, q)
        grads = [None, None]
        if weight.requires_grad:                                     # dW = G cols^T (5.2)
            grads[1] = xp.matmul(g_t, cols_g.transpose(0, 2, 1)).reshape(weight.shape)
        if x.requires_grad:                                          # dx = col2im(W^T G)
            dcols = xp.matmul(w_g.transpose(0, 2, 1), g_t)           # (5.3)-(5.4)
            grads[0] = col2im(dcols, x.shape, (kh, kw), stride, padding)
        if has_bias:
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
