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

Phases.  Those strided views copy rows only Wo numbers long, and col2im's strided additions
touch every other number: NumPy runs both slowly.  Where the output grid is the input grid
divided by the stride (H = s Ho, as in the U-Net's stride-2 downsampling), offset i of the
kernel reads, from output row a, input row s a + i - p = s (a + d) + r: row a + d of the
*phase* r of the input (its rows r, r + s, ...).  Laid out flat, a phase shifted by d rows is
one contiguous slice, so im2col is kh*kw contiguous copies from the s*s phases and col2im
kh*kw contiguous additions onto them (``_phase_shifts``), with the few entries whose window
hangs over the image's edge set to zero (``_zero_outside``).

"Same" convolutions (stride 1, odd kernel, padding (k - 1) / 2: every 3x3 convolution of the
U-Net) take a faster road, ``flat_pad`` and ``flat_windows``: each channel becomes one long
row, its images and their rows end to end, so that a kernel offset (i, j) is a plain *shift*
of that row and im2col is kh*kw long contiguous copies instead of copies of rows only Wo
numbers long.  A shift reads the wrong pixel only where a window hangs over the edge of its
image (it reads the neighbouring row, or image): those entries, the padding zeros of ordinary
im2col, are zeroed after the copy.  The output grid is the input grid, so no position is
computed in vain.  A 1x1 convolution needs no columns at all: y[n] = W x[n], one product per
image on the NCHW array.

On that road the backward pass keeps the input alone (the graph holds it anyway): the
columns, kh*kw times larger, are built a few images at a time (``CHUNK_BYTES``) in a scratch
buffer (``_workspace``) shared by every convolution.  Its backward pass needs no input columns
at all: at stride 1, col2im(W^T G) is the convolution of G (padded by k - 1 - p) with the
flipped, transposed kernel (lesson 05, eq. 5.4b), and dW is the same columns of G times the
input laid out as rows (eq. 5.4c).  One pass over G's columns gives both, with kh*kw
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
           "same_ok", "conv_output_size"]


def _pair(v):
    return (int(v), int(v)) if not isinstance(v, (tuple, list)) else (int(v[0]), int(v[1]))


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """floor((size + 2 padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x, kernel, stride=1, padding=0):
    """(N, C, H, W) array -> cols of shape (C*kh*kw, N*Ho*Wo), with (Ho, Wo).

    cols[(c, i, j), (n, a, b)] = xpad[n, c, s a + i, s b + j].  Built from one strided view of
    the padded input and one copy, or, where the output grid is the input grid divided by the
    stride, from the input's phases (``_phase_shifts``).
    """
    xp = backend.array_module_of(x)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise ValueError(f"conv: kernel {kh}x{kw} does not fit the padded input {h}x{w} "
                         f"(padding {ph},{pw})")
    if kh == kw == sh == sw == 1 and ph == pw == 0:  # 1x1: the columns are the pixels
        return xp.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(c, n * h * w), (ho, wo)
    cols = _workspace.pooled("im2col.cols", (c, kh, kw, n, ho, wo), x.dtype, xp)
    if _phases_fit(x.shape, (kh, kw), (sh, sw), (ph, pw)):
        rows, columns = _phase_shifts(kh, sh, ph), _phase_shifts(kw, sw, pw)
        planes, margin = _phase_planes(x, (sh, sw), rows, columns)
        q = n * ho * wo
        flat = cols.reshape(c, kh, kw, q)
        for i, j, ri, rj, shifted in _shifted_slices(rows, columns, margin, wo, q):
            flat[:, i, j] = planes[ri, rj, :, shifted]
        _zero_outside(cols, rows, columns)
        return cols.reshape(c * kh * kw, q), (ho, wo)
    if ph or pw:
        padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        padded[:, :, ph:ph + h, pw:pw + w] = x
    else:
        padded = xp.ascontiguousarray(x)
    s_n, s_c, s_h, s_w = padded.strides
    cols[...] = xp.lib.stride_tricks.as_strided(
        padded, shape=(c, kh, kw, n, ho, wo),
        strides=(s_c, s_h, s_w, s_n, sh * s_h, sw * s_w))
    return cols.reshape(c * kh * kw, n * ho * wo), (ho, wo)


def col2im(cols, shape, kernel, stride=1, padding=0, overwrite_cols: bool = False):
    """The adjoint of ``im2col``: (C*kh*kw, N*Ho*Wo) -> (N, C, H, W), overlaps summed.

    One add per kernel offset (i, j): kh*kw array operations, no loop over pixels.  Where
    the phases fit (see ``im2col``) each add is a contiguous shifted add onto one phase, and
    the entries that would wrap around a row are zeroed first: in ``cols`` itself if
    ``overwrite_cols`` (the caller's scratch array, whose contents are then undefined), else
    in a copy.
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
    if _phases_fit(shape, (kh, kw), (sh, sw), (ph, pw)):
        rows, columns = _phase_shifts(kh, sh, ph), _phase_shifts(kw, sw, pw)
        cols = cols if overwrite_cols else cols.copy()
        _zero_outside(cols, rows, columns)
        q = n * ho * wo
        margin = _margin(rows, columns, wo)
        acc = xp.zeros((sh, sw, c, q + 2 * margin), dtype=cols.dtype)
        flat = cols.reshape(c, kh, kw, q)
        for i, j, ri, rj, shifted in _shifted_slices(rows, columns, margin, wo, q):
            acc[ri, rj, :, shifted] += flat[:, i, j]
        dx = xp.empty(shape, dtype=cols.dtype)
        for ri in range(sh):
            for rj in range(sw):
                dx[:, :, ri::sh, rj::sw] = acc[ri, rj, :, margin:margin + q].reshape(
                    c, n, ho, wo).transpose(1, 0, 2, 3)
        return dx
    acc = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            acc[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += cols[:, i, j]
    inner = acc[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(inner)


def _phases_fit(shape, kernel, stride, padding) -> bool:
    """Whether the output grid is the input grid divided by the stride, (Ho, Wo) =
    (H / s, W / s): true of 'same' convolutions at stride 1 and of the U-Net's stride-2
    downsampling (kernel 3, padding 1, even sizes)."""
    h, w = shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    return (h % sh == 0 and w % sw == 0 and conv_output_size(h, kh, sh, ph) == h // sh
            and conv_output_size(w, kw, sw, pw) == w // sw)


def _phase_shifts(kernel: int, stride: int, padding: int) -> list:
    """For each kernel offset i along one axis, (r, d) with i - p = s d + r, 0 <= r < s.

    Output row a reads input row s a + i - p = s (a + d) + r: row a + d of *phase* r, the
    input rows r, r + s, r + 2s, ...  Where H = s Ho every phase has Ho rows, so offset i
    reads its phase shifted by d rows: a strided convolution is a sum of stride-1 ones, one
    per phase.  At stride 1 there is one phase and d = i - p."""
    return [((i - padding) % stride, (i - padding) // stride) for i in range(kernel)]


def _same_shifts(kernel) -> tuple:
    """(rows, columns) of ``_phase_shifts`` for a 'same' convolution: stride 1, padding
    (k - 1) / 2, so offset i reads its (only) phase shifted by i - p."""
    (kh, kw) = _pair(kernel)
    return _phase_shifts(kh, 1, kh // 2), _phase_shifts(kw, 1, kw // 2)


def _margin(rows, columns, width: int) -> int:
    """How far (in a flat phase of rows ``width`` long) the largest shift reaches."""
    return max(abs(d) for _, d in rows) * width + max(abs(d) for _, d in columns)


def _shifted_slices(rows, columns, margin: int, width: int, q: int):
    """For each kernel offset (i, j): (i, j, r_i, r_j, slice), the slice of phase (r_i, r_j),
    laid out flat with ``margin`` in front and rows ``width`` long, that the offset reads
    for output positions 0 .. q-1 (shifted by d_i rows and d_j columns)."""
    for i, (ri, di) in enumerate(rows):
        for j, (rj, dj) in enumerate(columns):
            start = margin + di * width + dj
            yield i, j, ri, rj, slice(start, start + q)


def _phase_planes(x, stride, rows, columns, tag: str = "conv.phases"):
    """x (N, C, H, W) split into its phases, each laid out flat: (sh, sw, C, margin + N Ho Wo
    + margin), element [r, t, c, margin + (n Ho + a) Wo + b] = x[n, c, sh a + r, sw b + t],
    with zero margins as wide as the largest shift (``flat_pad`` is the stride-1 case).
    A scratch buffer (``_workspace`` ``tag``), valid until the next call with that tag.
    Returns (planes, margin)."""
    xp = backend.array_module_of(x)
    n, c, h, w = x.shape
    (sh, sw) = stride
    ho, wo = h // sh, w // sw
    q = n * ho * wo
    margin = _margin(rows, columns, wo)
    planes = _workspace.buffer(tag, (sh, sw, c, q + 2 * margin), x.dtype, xp)
    planes[..., :margin] = 0
    planes[..., margin + q:] = 0
    for r in range(sh):
        for t in range(sw):
            planes[r, t, :, margin:margin + q].reshape(c, n, ho, wo)[...] = \
                x[:, :, r::sh, t::sw].transpose(1, 0, 2, 3)
    return planes, margin


def same_ok(kernel, stride, padding) -> bool:
    """The flat road takes 'same' convolutions: stride 1, odd kernel, padding (k - 1) / 2,
    so that the output grid is the input grid (Ho, Wo) = (H, W)."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    return sh == sw == 1 and kh % 2 == kw % 2 == 1 and 2 * ph == kh - 1 and 2 * pw == kw - 1


def flat_pad(x, kernel, tag: str = "conv.flat"):
    """(N, C, H, W) -> (C, margin + N H W + margin): each channel one long row, its images
    and their rows end to end, with margin = ph W + pw zeros at both ends, where
    (ph, pw) = ((kh - 1) / 2, (kw - 1) / 2).  Pixel (n, c, y, x) sits at
    [c, margin + (n H + y) W + x].  The stride-1 case of ``_phase_planes``: one phase.

    A reused scratch buffer (``_workspace`` ``tag``), valid until the next call with that tag:
    conv2d rebuilds it in its backward pass from the input (which the graph keeps anyway)
    rather than keep a second copy.
    """
    planes, _ = _phase_planes(x, (1, 1), *_same_shifts(kernel), tag)
    return planes[0, 0]


def flat_windows(flat, kernel, width: int, q: int):
    """The (C, kh, kw, Q) view of ``flat`` whose element (c, i, j, q) is flat[c, q + i W + j]:
    the pixel that window entry (i, j) of output position q reads, (i - ph) rows and
    (j - pw) columns away from q -- a pure *shift* of the row, no copy.

    Copying it is stride-1 im2col from kh*kw long contiguous copies.  Only where a window
    hangs over the edge of its image does the shift read the wrong pixel (the neighbouring
    row's, or the next image's) instead of a padding zero: ``_flat_columns`` zeroes those."""
    xp = backend.array_module_of(flat)
    (kh, kw) = _pair(kernel)
    s_c, s_e = flat.strides
    return xp.lib.stride_tricks.as_strided(flat, shape=(flat.shape[0], kh, kw, q),
                                           strides=(s_c, width * s_e, s_e, s_e))


#: bytes of im2col columns (or of their gradient) built at a time: whole images, about this
#: many bytes' worth, so that the scratch memory is a few images' columns and not the whole
#: batch's (187 MB for 96 channels at 28x28, batch 64), and so that a chunk is still in cache
#: when the GEMM reads it.  On the 2-core machine copy + GEMM of a 32-channel 28x28 layer
#: took 7.9 ms in 4 MiB chunks, 12-14 ms in 16-64 MiB ones; below 2 MiB the GEMMs get small.
CHUNK_BYTES = 4 * 2 ** 20


def _images_per_chunk(bytes_per_image: int, n: int) -> int:
    return max(1, min(n, CHUNK_BYTES // max(1, bytes_per_image)))


def _zero_outside(cols, rows, columns) -> None:
    """Zero the entries of cols (C, kh, kw, N, Ho, Wo) whose window entry (i, j) falls outside
    the image, given each offset's shift d (``_phase_shifts``): for d < 0 the first -d
    output rows, for d > 0 the last d, and the same for columns.  These are the padding
    zeros of ordinary im2col; thin slices, one strided write per offset that shifts."""
    ho, wo = cols.shape[4:]
    for i, (_, d) in enumerate(rows):
        if d:
            cols[:, i, :, :, slice(0, min(-d, ho)) if d < 0 else slice(max(ho - d, 0), ho)] = 0
    for j, (_, d) in enumerate(columns):
        if d:
            cols[:, :, j, :, :, slice(0, min(-d, wo)) if d < 0 else slice(max(wo - d, 0), wo)] = 0


def _flat_columns(x, kernel):
    """im2col of a 'same' convolution of the array x (N, C, H, W), in chunks of whole images:
    yields (n0, k, cols) with cols the (C kh kw, k H W) columns of images n0 .. n0+k-1.
    cols lives in a scratch buffer, overwritten by the next chunk."""
    xp = backend.array_module_of(x)
    (kh, kw) = _pair(kernel)
    n, c, h, w = x.shape
    windows = flat_windows(flat_pad(x, (kh, kw)), (kh, kw), w, n * h * w)
    rows, columns = _same_shifts((kh, kw))
    per = _images_per_chunk(c * kh * kw * h * w * x.itemsize, n)
    for n0 in range(0, n, per):
        k = min(per, n - n0)
        cols = _workspace.buffer("conv.columns", (c, kh, kw, k * h * w), x.dtype, xp)
        cols[...] = windows[..., n0 * h * w:(n0 + k) * h * w]
        _zero_outside(cols.reshape(c, kh, kw, k, h, w), rows, columns)
        yield n0, k, cols.reshape(c * kh * kw, k * h * w)


def _flat_conv(x, w_g, bias, kernel):
    """'Same' convolution of the array x (N, C, H, W) by w_g (groups, O/g, C/g kh kw):
    y = W cols, one GEMM per chunk of ``_flat_columns``.  A new array (N, O, H, W)."""
    xp = backend.array_module_of(x)
    n, c, h, w = x.shape
    groups, og, _ = w_g.shape
    o = groups * og
    y = xp.empty((n, o, h, w), dtype=x.dtype)
    for n0, k, cols in _flat_columns(x, kernel):
        out = xp.matmul(w_g, cols.reshape(groups, -1, cols.shape[1]), out=_workspace.buffer(
            "conv.out", (groups, og, cols.shape[1]), x.dtype, xp)).reshape(o, k, h * w)
        if bias is not None:
            out += bias.reshape(o, 1, 1)
        y[n0:n0 + k] = out.reshape(o, k, h, w).transpose(1, 0, 2, 3)
    return y


def _flat_backward(g, x, weight, groups: int):
    """(dx, dW) of a 'same' convolution (None where no gradient is needed), from one pass
    over the columns of G (lesson 05, eq. 5.4b-5.4c).

    dx is not col2im(W^T G) but what that equals at stride 1: the convolution of G, padded
    by k - 1 - p (= p here), with the kernel flipped in space and transposed in channels,
    w'[c, o, i, j] = w[o, c, k-1-i, k-1-j] (eq. 5.4b).  Its im2col *copies* kh*kw shifted
    arrays where col2im would *add* as many.

    dW comes from the same columns: dW[o, c, k-1-i, k-1-j] = sum_q gcols[(o, i, j), q] x[c, q]
    (eq. 5.4c), so that the input's own columns are never rebuilt.  The product runs as
    gcols x^T, (O kh kw x chunk) @ (chunk x C): the orientation OpenBLAS ran 1.5-2x faster
    than x cols^T or kh*kw products with K = N H W.
    """
    if not (x.requires_grad or weight.requires_grad):
        return None, None
    xp = backend.array_module_of(g)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    w_flipped = weight.data.reshape(groups, og, cg, kh, kw)[..., ::-1, ::-1]
    w_flipped = w_flipped.transpose(0, 2, 1, 3, 4).reshape(groups, cg, og * kh * kw)
    if weight.requires_grad:   # x as (C, N H W), the columns' grid
        planes, margin = _phase_planes(x.data, (1, 1), *_same_shifts((kh, kw)),
                                       tag="conv.flat_input")
        x_rows = planes[0, 0, :, margin:margin + n * h * w].reshape(groups, cg, n * h * w)
        dw_flipped = xp.zeros((groups, og * kh * kw, cg), dtype=g.dtype)
    dx = xp.empty(x.shape, dtype=g.dtype) if x.requires_grad else None
    for n0, k, gcols in _flat_columns(g, (kh, kw)):
        gcols = gcols.reshape(groups, og * kh * kw, gcols.shape[1])
        if x.requires_grad:
            out = xp.matmul(w_flipped, gcols, out=_workspace.buffer(
                "conv.out", (groups, cg, gcols.shape[2]), g.dtype, xp))
            dx[n0:n0 + k] = out.reshape(c, k, h, w).transpose(1, 0, 2, 3)
        if weight.requires_grad:
            start = n0 * h * w
            dw_flipped += xp.matmul(gcols, x_rows[:, :, start:start + gcols.shape[2]]
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
    image on the NCHW data itself; 'same' convolutions take the flat layout, whose dx is the
    equal convolution of G by the flipped kernel (eq. 5.4b); all others use im2col and col2im
    as written (from the input's phases where they fit).
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
    flat = same_ok((kh, kw), stride, padding) and not pointwise
    w_g = weight.data.reshape(groups, o // groups, cg * kh * kw)
    if pointwise:  # 1x1: y[n] = W x[n], one GEMM per image straight from NCHW, no copies
        y = xp.matmul(w_g, x.data.reshape(n, groups, cg, h * w)).reshape(n, o, h, w)
        if bias is not None:
            y += bias.data.reshape(1, o, 1, 1)
    elif flat:  # 'same': the shifted-rows layout (flat_windows), a few images at a time
        y = _flat_conv(x.data, w_g, None if bias is None else bias.data, (kh, kw))
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
            grads[:2] = _flat_backward(g, x, weight, groups)
        else:
            g_t = xp.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(groups, o // groups, q)
            if weight.requires_grad:
                dw_t = xp.matmul(cols_g, g_t.transpose(0, 2, 1))   # the faster orientation
                grads[1] = dw_t.transpose(0, 2, 1).reshape(weight.shape)
            if x.requires_grad:
                dcols = xp.matmul(w_g.transpose(0, 2, 1), g_t, out=_workspace.buffer(
                    "conv.column_grad", (groups, cg * kh * kw, q), g.dtype, xp))
                grads[0] = col2im(dcols, x.shape, (kh, kw), stride, padding, overwrite_cols=True)
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
    y = col2im(w_mat.T @ x_mat, (n, o, out_h, out_w), (kh, kw), stride, padding,
               overwrite_cols=True)
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
