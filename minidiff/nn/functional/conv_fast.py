"""The fast roads of conv2d: the same numbers as the reference road (``conv.py``, lesson 05),
with fewer and cheaper copies around the matrix products.

``conv.conv2d`` asks ``road`` which of three roads takes a shape, and every other shape takes
the reference road.  All three compute Y = W cols and its gradients (eq. 5.1-5.4) -- the
GEMMs are the same -- and differ only in how the columns are laid out:

* **pointwise** (1x1 kernel, stride 1, no padding): the columns are the pixels, so
  y[n] = W x[n], one product per image straight from the NCHW array, no copy at all.

* **flat** ('same' convolutions: stride 1, odd kernel, padding (k - 1) / 2 -- every 3x3
  convolution of the U-Net).  Each channel becomes one long row, its images and their rows
  end to end (``flat_pad``), so that kernel offset (i, j) is a plain *shift* of that row
  (``flat_windows``) and im2col is kh*kw long contiguous copies instead of copies of rows
  only Wo numbers long.  A shift reads the wrong pixel only where a window hangs over the
  edge of its image (it reads the neighbouring row, or image): those entries, the padding
  zeros of ordinary im2col, are zeroed after the copy (``_zero_outside``).  The backward pass
  needs no input columns at all: at stride 1, col2im(W^T G) is the convolution of G with the
  flipped, transposed kernel (eq. 5.4b), and dW is the same columns of G times the input laid
  out as rows (eq. 5.4c) -- kh*kw copies instead of kh*kw scatter-adds.

* **phase** (the output grid is the input grid divided by the stride, H = s Ho: the U-Net's
  stride-2 downsampling).  Kernel offset i reads, from output row a, input row
  s a + i - p = s (a + d) + r: row a + d of the *phase* r of the input (its rows r, r + s,
  ...; eq. 5.1b).  Laid out flat, a phase shifted by d rows is one contiguous slice, so
  im2col is kh*kw contiguous copies from the s*s phases and col2im kh*kw contiguous
  additions onto them (``_phase_shifts``).

Memory.  The columns are kh*kw times the input.  Both the flat and the phase road build them
a few images at a time (``CHUNK_BYTES``, ``_columns``) in scratch memory shared by every
convolution (``_workspace``), and keep nothing for backward but the input, which the graph
holds anyway: the backward pass rebuilds what it needs from it.
"""
from minidiff import backend
from minidiff.backend import threads
from minidiff.nn.functional import _workspace
from minidiff.nn.functional._reduce import row_sums
from minidiff.nn.functional.conv import _conv_inputs, _pair, _reference, conv_output_size
from minidiff.tensor import Tensor

__all__ = ["road", "conv2d", "phase_im2col", "phase_col2im", "flat_pad", "flat_windows",
           "same_ok", "phases_fit", "CHUNK_BYTES"]


def road(x_shape, w_shape, stride, padding):
    """Which fast road takes this convolution: "pointwise", "flat", "phase", or None (the
    reference road)."""
    kernel, (sh, sw), (ph, pw) = tuple(w_shape[2:]), _pair(stride), _pair(padding)
    if kernel == (1, 1) and sh == sw == 1 and ph == pw == 0:
        return "pointwise"
    if same_ok(kernel, stride, padding):
        return "flat"
    if min(x_shape[2:]) > 0 and phases_fit(x_shape, kernel, stride, padding):
        return "phase"
    return None


# ----------------------------------------------------------------------------- phases

def phases_fit(shape, kernel, stride, padding) -> bool:
    """Whether the output grid is the input grid divided by the stride, (Ho, Wo) =
    (H / s, W / s): true of 'same' convolutions at stride 1 and of the U-Net's stride-2
    downsampling (kernel 3, padding 1, even sizes)."""
    h, w = shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
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

    def lay_out(lo, hi):   # channels lo .. hi-1
        for r in range(sh):
            for t in range(sw):
                planes[r, t, lo:hi, margin:margin + q].reshape(hi - lo, n, ho, wo)[...] = \
                    x[:, lo:hi, r::sh, t::sw].transpose(1, 0, 2, 3)
    threads.split(lay_out, c, planes)
    return planes, margin


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


def phase_im2col(x, kernel, stride, padding):
    """``conv.im2col`` where ``phases_fit``: kh*kw contiguous copies from the input's phases
    (conv2d builds the same columns a few images at a time, ``_columns``)."""
    xp = backend.array_module_of(x)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    ho, wo = h // sh, w // sw
    cols = xp.empty((c, kh, kw, n, ho, wo), dtype=x.dtype)
    rows, columns = _phase_shifts(kh, sh, ph), _phase_shifts(kw, sw, pw)
    planes, margin = _phase_planes(x, (sh, sw), rows, columns)
    q = n * ho * wo
    flat = cols.reshape(c, kh, kw, q)
    for i, j, ri, rj, shifted in _shifted_slices(rows, columns, margin, wo, q):
        flat[:, i, j] = planes[ri, rj, :, shifted]
    _zero_outside(cols, rows, columns)
    return cols.reshape(c * kh * kw, q), (ho, wo)


def phase_col2im(cols, shape, kernel, stride, padding, overwrite_cols: bool = False):
    """``conv.col2im`` where ``phases_fit``: kh*kw contiguous shifted additions onto the
    phases.  The entries that would wrap around a row are zeroed first: in ``cols`` itself if
    ``overwrite_cols`` (the caller's scratch array, whose contents are then undefined), else
    in a copy."""
    xp = backend.array_module_of(cols)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    n, c, h, w = shape
    ho, wo = h // sh, w // sw
    cols = cols.reshape(c, kh, kw, n, ho, wo)
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


# ----------------------------------------------------------------------------- flat road

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
    row's, or the next image's) instead of a padding zero: ``_columns`` zeroes those."""
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


def _columns(x, kernel, stride, padding, tag: str = "conv.flat"):
    """im2col of the array x (N, C, H, W) where ``phases_fit``, in chunks of whole images:
    returns (per, count, chunk_columns), ``per`` images in each of ``count`` chunks (the last
    may have fewer), and chunk_columns(i) gives (n0, k, cols), with cols the
    (C kh kw, k Ho Wo) columns of images n0 = i per .. n0+k-1: kh*kw contiguous copies from
    the input's phases (at stride 1, from ``flat_pad``: the shifted rows of
    ``flat_windows``), then the entries whose window hangs over the edge zeroed.

    The phases are laid out once, here; the chunks' columns live in the scratch buffer of the
    thread that asks for them (``_workspace``), overwritten by its next chunk, so that the
    chunks can be worked on by several threads at once (``threads.split``)."""
    xp = backend.array_module_of(x)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    ho, wo = h // sh, w // sw
    rows, columns = _phase_shifts(kh, sh, ph), _phase_shifts(kw, sw, pw)
    planes, margin = _phase_planes(x, (sh, sw), rows, columns, tag)
    # at stride 1 the kh*kw shifts are one strided view: one copy, twice as fast as kh*kw
    windows = flat_windows(planes[0, 0], (kh, kw), wo, n * ho * wo) if sh == sw == 1 else None
    per = _images_per_chunk(c * kh * kw * ho * wo * x.itemsize, n)

    def chunk_columns(i: int):
        n0 = i * per
        k = min(per, n - n0)
        q = k * ho * wo
        cols = _workspace.buffer("conv.columns", (c, kh, kw, q), x.dtype, xp)
        if windows is not None:
            cols[...] = windows[..., n0 * ho * wo:n0 * ho * wo + q]
        else:
            for i_, j, ri, rj, shifted in _shifted_slices(rows, columns,
                                                          margin + n0 * ho * wo, wo, q):
                cols[:, i_, j] = planes[ri, rj, :, shifted]
        _zero_outside(cols.reshape(c, kh, kw, k, ho, wo), rows, columns)
        return n0, k, cols.reshape(c * kh * kw, q)
    return per, -(-n // per), chunk_columns


def _conv_chunks(x, w_g, bias, kernel, stride, padding):
    """Convolution of the array x (N, C, H, W) by w_g (groups, O/g, C/g kh kw) where
    ``phases_fit``: y = W cols, one GEMM per chunk of ``_columns``, the chunks shared out
    among the threads.  A new array (N, O, Ho, Wo)."""
    xp = backend.array_module_of(x)
    n, c, h, w = x.shape
    (sh, sw) = _pair(stride)
    ho, wo = h // sh, w // sw
    groups, og, _ = w_g.shape
    o = groups * og
    y = xp.empty((n, o, ho, wo), dtype=x.dtype)
    _, count, chunk_columns = _columns(x, kernel, stride, padding)

    def convolve(first, last):
        for i in range(first, last):
            n0, k, cols = chunk_columns(i)
            out = xp.matmul(w_g, cols.reshape(groups, -1, cols.shape[1]), out=_workspace.buffer(
                "conv.out", (groups, og, cols.shape[1]), x.dtype, xp)).reshape(o, k, ho * wo)
            if bias is not None:
                out += bias.reshape(o, 1, 1)
            y[n0:n0 + k] = out.reshape(o, k, ho, wo).transpose(1, 0, 2, 3)
    threads.split(convolve, count, x)
    return y


def _sum_in_order(products, xp, shape, dtype):
    """0 + p_0 + p_1 + ...: the chunks' dW in chunk order, the same bits however many threads
    computed them."""
    total = xp.zeros(shape, dtype=dtype)
    for p in products:
        total += p
    return total


def _phase_backward(g, x, weight, groups: int, stride, padding):
    """(dx, dW) of a strided convolution where ``phases_fit`` (None where no gradient is
    needed), chunk by chunk of ``_columns``, which rebuilds the input's columns from x (the
    graph keeps x anyway) rather than keep them from the forward pass:

        dW += G_chunk cols_chunk^T,      dcols = W^T G_chunk,
        dx = col2im(dcols): kh*kw contiguous shifted additions onto the phases (eq. 5.4),
             after zeroing the entries whose window hangs over the edge.

    A thread adds its chunks' dcols into phases of its own images (and a margin either
    side); these are added up once all are done.  A chunk adds nothing but zeros outside its
    own images (the zeroed entries), so the sum is the same bits as one thread's.
    """
    if not (x.requires_grad or weight.requires_grad):
        return None, None
    xp = backend.array_module_of(g)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    ho, wo = h // sh, w // sw
    w_g = weight.data.reshape(groups, og, cg * kh * kw)
    rows, columns = _phase_shifts(kh, sh, ph), _phase_shifts(kw, sw, pw)
    margin = _margin(rows, columns, wo)
    per, count, chunk_columns = _columns(x.data, (kh, kw), stride, padding)
    products, pieces = [None] * count, []

    def backward(first, last):
        start, stop = first * per, min(n, last * per)     # this thread's images
        if x.requires_grad:
            acc = xp.zeros((sh, sw, c, (stop - start) * ho * wo + 2 * margin), dtype=g.dtype)
            pieces.append((start, acc))
        for i in range(first, last):
            n0, k, cols = chunk_columns(i)
            q = k * ho * wo
            g_rows = _workspace.buffer("conv.grad_rows", (groups, og, q), g.dtype, xp)
            g_rows.reshape(o, k, ho * wo)[...] = \
                g[n0:n0 + k].reshape(k, o, ho * wo).transpose(1, 0, 2)

            def weight_gradient():                                    # G cols^T
                products[i] = xp.matmul(g_rows,
                                        cols.reshape(groups, cg * kh * kw, q).transpose(0, 2, 1))

            def input_gradient():                                     # dcols = W^T G
                dcols = xp.matmul(w_g.transpose(0, 2, 1), g_rows, out=_workspace.buffer(
                    "conv.column_grad", (groups, cg * kh * kw, q), g.dtype, xp))
                dcols = dcols.reshape(c, kh, kw, q)
                _zero_outside(dcols.reshape(c, kh, kw, k, ho, wo), rows, columns)
                for i_, j, ri, rj, shifted in _shifted_slices(
                        rows, columns, margin + (n0 - start) * ho * wo, wo, q):
                    acc[ri, rj, :, shifted] += dcols[:, i_, j]
            threads.together([input_gradient if x.requires_grad else None,
                              weight_gradient if weight.requires_grad else None], g)
    threads.split(backward, count, x.data)
    dx = None
    if x.requires_grad:
        if len(pieces) == 1:
            acc = pieces[0][1]
        else:
            acc = xp.zeros((sh, sw, c, n * ho * wo + 2 * margin), dtype=g.dtype)
            for start, piece in sorted(pieces, key=lambda item: item[0]):
                acc[..., start * ho * wo:start * ho * wo + piece.shape[-1]] += piece
        dx = xp.empty(x.shape, dtype=g.dtype)
        for ri in range(sh):
            for rj in range(sw):
                dx[:, :, ri::sh, rj::sw] = acc[ri, rj, :, margin:margin + n * ho * wo].reshape(
                    c, n, ho, wo).transpose(1, 0, 2, 3)
    dw = None
    if weight.requires_grad:
        dw = _sum_in_order(products, xp, (groups, og, cg * kh * kw), g.dtype)
        dw = dw.reshape(weight.shape)
    return dx, dw


def _flat_backward(g, x, weight, groups: int):
    """(dx, dW) of a 'same' convolution (None where no gradient is needed), from one pass
    over the columns of G (lesson 05, eq. 5.4b-5.4c), chunk by chunk, the chunks shared out
    among the threads.

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
    dx = xp.empty(x.shape, dtype=g.dtype) if x.requires_grad else None
    _, count, chunk_columns = _columns(g, (kh, kw), 1, (kh // 2, kw // 2))
    products = [None] * count

    def backward(first, last):
        for i in range(first, last):
            n0, k, gcols = chunk_columns(i)
            gcols = gcols.reshape(groups, og * kh * kw, gcols.shape[1])

            def input_gradient():
                out = xp.matmul(w_flipped, gcols, out=_workspace.buffer(
                    "conv.out", (groups, cg, gcols.shape[2]), g.dtype, xp))
                dx[n0:n0 + k] = out.reshape(c, k, h, w).transpose(1, 0, 2, 3)

            def weight_gradient():
                start = n0 * h * w
                products[i] = xp.matmul(gcols, x_rows[:, :, start:start + gcols.shape[2]]
                                        .transpose(0, 2, 1))
            # where the chunks are too few to share out, the two products share the threads
            threads.together([input_gradient if x.requires_grad else None,
                              weight_gradient if weight.requires_grad else None], g)
    threads.split(backward, count, g)
    dw = None
    if weight.requires_grad:
        dw_flipped = _sum_in_order(products, xp, (groups, og * kh * kw, cg), g.dtype)
        dw = dw_flipped.reshape(groups, og, kh, kw, cg)[:, :, ::-1, ::-1]
        dw = dw.transpose(0, 1, 4, 2, 3).reshape(weight.shape)
    return dx, dw


# ----------------------------------------------------------------------------- conv2d

def conv2d(x, weight, bias=None, stride=1, padding=0, groups: int = 1) -> Tensor:
    """y = W im2col(x) + b, reshaped to (N, O, Ho, Wo), weight (O, C/groups, kh, kw): the
    convolution every layer calls.  A shape one of the roads here takes goes there (the same
    numbers as the reference, fewer copies); every other shape takes lesson 05's reference
    road, ``conv.conv2d_reference`` (eq. 5.1-5.4)."""
    parents = _conv_inputs(x, weight, bias, groups)
    road_name = road(parents[0].shape, parents[1].shape, stride, padding)
    if road_name is None:
        return _reference(parents, stride, padding, groups)
    return _on_road(parents, road_name, stride, padding, groups)


def _on_road(parents, road_name: str, stride, padding, groups: int) -> Tensor:
    """conv2d on road ``road_name`` (see ``road``) of the checked tensors [x, weight(, bias)]:
    the same y and gradients as ``conv.conv2d_reference``."""
    x, weight = parents[0], parents[1]
    bias = parents[2] if len(parents) == 3 else None
    xp = backend.array_module_of(x.data)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    w_g = weight.data.reshape(groups, og, cg * kh * kw)
    if road_name == "pointwise":  # y[n] = W x[n], one GEMM per image straight from NCHW
        x4 = x.data.reshape(n, groups, cg, h * w)
        y = xp.empty((n, groups, og, h * w), dtype=x.dtype)

        def project(lo, hi):
            xp.matmul(w_g, x4[lo:hi], out=y[lo:hi])
            if bias is not None:
                y[lo:hi] += bias.data.reshape(1, groups, og, 1)
        threads.split(project, n, y)
        y = y.reshape(n, o, h, w)
    else:                         # flat or phases: columns a few images at a time
        y = _conv_chunks(x.data, w_g, None if bias is None else bias.data, (kh, kw), stride,
                         padding)

    def backward(g):
        grads = [None, None]
        if road_name == "pointwise":
            g4 = g.reshape(n, groups, og, h * w)
            per_image = xp.empty((n, groups, og, cg), dtype=g.dtype) \
                if weight.requires_grad else None
            dx = xp.empty((n, groups, cg, h * w), dtype=g.dtype) if x.requires_grad else None

            def project_back(lo, hi):
                def weight_gradient():       # G[n] x[n]^T
                    xp.matmul(g4[lo:hi], x4[lo:hi].transpose(0, 1, 3, 2), out=per_image[lo:hi])

                def input_gradient():        # W^T G[n]
                    xp.matmul(w_g.transpose(0, 2, 1), g4[lo:hi], out=dx[lo:hi])
                threads.together([input_gradient if dx is not None else None,
                                  weight_gradient if per_image is not None else None], g4)
            threads.split(project_back, n, g4)
            if per_image is not None:        # sum_n G[n] x[n]^T
                grads[1] = per_image.sum(axis=0).reshape(weight.shape)
            if dx is not None:
                grads[0] = dx.reshape(x.shape)
        elif road_name == "flat":
            grads[:2] = _flat_backward(g, x, weight, groups)
        else:
            grads[:2] = _phase_backward(g, x, weight, groups, stride, padding)
        if bias is not None:
            grads.append(row_sums(g.reshape(n, o, -1)).sum(axis=0))
        return grads
    return Tensor._make(y, tuple(parents), backward, "conv2d")
