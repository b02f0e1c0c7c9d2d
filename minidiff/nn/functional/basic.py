"""Linear, embedding, dropout, nearest upsampling, average pooling and the patch reshapes
(lesson 05).

    linear:     y = x W^T + b            dx = g W,  dW = g^T x,  db = sum_rows g
                (W is (out, in); leading axes of x are flattened into rows: one GEMM each)
    embedding:  y = W[idx]               dW = scatter-add of g into the rows idx picked
    dropout:    y = x m / (1 - p)        m ~ Bernoulli(1 - p); dx = g m / (1 - p)
                (the 1/(1-p) keeps E[y] = x, so evaluation needs no rescaling)
    upsample_nearest (factor s):  y[.., s a + i, s b + j] = x[.., a, b]
                dx[a, b] = sum of g over the s x s block it was copied to
    avg_pool2d (kernel k, stride t): y[a, b] = mean of the k x k window at (t a, t b)
                dx = each window's g / k^2 added back over the window (k^2 strided adds)
    space_to_depth (patch p):  y[n, c p^2 + i p + j, a, b] = x[n, c, p a + i, p b + j]
    depth_to_space (patch p):  its inverse; each is the other's backward (a permutation of
                the elements, so dx is g permuted back)
"""
from minidiff import backend
from minidiff.ops._inputs import as_tensors
from minidiff.tensor import Tensor

__all__ = ["linear", "embedding", "dropout", "upsample_nearest", "avg_pool2d", "space_to_depth",
           "depth_to_space"]


def linear(x, weight, bias=None) -> Tensor:
    """y = x W^T + b, W of shape (out, in), x of shape (..., in)."""
    parents = as_tensors("linear", x, weight, *([bias] if bias is not None else []))
    x, weight = parents[0], parents[1]
    out_f, in_f = weight.shape
    if x.shape[-1] != in_f:
        raise ValueError(f"linear: input (..., {x.shape[-1]}) does not match weight {weight.shape}")
    x2 = x.data.reshape(-1, in_f)
    y = x2 @ weight.data.T
    if bias is not None:
        y += bias.data

    def backward(g):
        g2 = g.reshape(-1, out_f)
        grads = [(g2 @ weight.data).reshape(x.shape) if x.requires_grad else None,
                 g2.T @ x2 if weight.requires_grad else None]
        if bias is not None:
            grads.append(g2.sum(axis=0))
        return grads
    return Tensor._make(y.reshape(x.shape[:-1] + (out_f,)), tuple(parents), backward, "linear")


def embedding(indices, weight) -> Tensor:
    """Rows of ``weight`` (num, dim) picked by integer ``indices`` of any shape."""
    (weight,) = as_tensors("embedding", weight)
    idx = indices.data if isinstance(indices, Tensor) else indices
    xp = backend.array_module_of(weight.data)
    idx = xp.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got {idx.dtype}")

    def backward(g):
        grad = xp.zeros_like(weight.data)
        backend.scatter_add(grad, idx.reshape(-1), g.reshape(-1, weight.shape[1]))
        return (grad,)
    return Tensor._make(weight.data[idx], (weight,), backward, "embedding")


def dropout(x, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (identity in eval)."""
    (x,) = as_tensors("dropout", x)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    keep = (backend.to_device(backend.rand(*x.shape, dtype=x.dtype), x.backend) >= p)
    scale = keep.astype(x.dtype) / (1.0 - p)
    return Tensor._make(x.data * scale, (x,), lambda g: (g * scale,), "dropout")


def upsample_nearest(x, scale_factor: int = 2) -> Tensor:
    """(N, C, H, W) -> (N, C, sH, sW), each pixel repeated into an s x s block."""
    (x,) = as_tensors("upsample_nearest", x)
    xp = backend.array_module_of(x.data)
    s = int(scale_factor)
    n, c, h, w = x.shape
    big = xp.broadcast_to(x.data[:, :, :, None, :, None], (n, c, h, s, w, s))
    y = big.reshape(n, c, h * s, w * s)

    def backward(g):
        # the s x s block sums as s + s array additions: NumPy's .sum(axis=(3, 5)) over the
        # two short strided axes took 50-100 times longer on the U-Net's feature maps
        g6 = g.reshape(n, c, h, s, w, s)
        rows = g6[:, :, :, 0].copy()                          # (n, c, h, w, s)
        for i in range(1, s):
            rows += g6[:, :, :, i]
        dx = rows[..., 0].copy()                              # (n, c, h, w)
        for j in range(1, s):
            dx += rows[..., j]
        return (dx,)
    return Tensor._make(y, (x,), backward, "upsample_nearest")


def avg_pool2d(x, kernel_size: int = 2, stride=None) -> Tensor:
    """Mean over k x k windows taken every ``stride`` (default k) pixels; no padding."""
    (x,) = as_tensors("avg_pool2d", x)
    xp = backend.array_module_of(x.data)
    k = int(kernel_size)
    t = k if stride is None else int(stride)
    n, c, h, w = x.shape
    ho, wo = (h - k) // t + 1, (w - k) // t + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"avg_pool2d: kernel {k} does not fit a {h}x{w} input")
    span_h, span_w = t * (ho - 1) + 1, t * (wo - 1) + 1
    y = xp.zeros((n, c, ho, wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            y += x.data[:, :, i:i + span_h:t, j:j + span_w:t]
    y /= k * k

    def backward(g):
        grad = xp.zeros(x.shape, dtype=g.dtype)
        share = g / (k * k)
        for i in range(k):
            for j in range(k):
                grad[:, :, i:i + span_h:t, j:j + span_w:t] += share
        return (grad,)
    return Tensor._make(y, (x,), backward, "avg_pool2d")


def _to_depth(data, p):
    n, c, h, w = data.shape
    blocks = data.reshape(n, c, h // p, p, w // p, p).transpose(0, 1, 3, 5, 2, 4)
    return blocks.reshape(n, c * p * p, h // p, w // p)


def _to_space(data, p):
    n, cpp, h, w = data.shape
    blocks = data.reshape(n, cpp // (p * p), p, p, h, w).transpose(0, 1, 4, 2, 5, 3)
    return blocks.reshape(n, cpp // (p * p), h * p, w * p)


def space_to_depth(x, patch: int) -> Tensor:
    """(N, C, H, W) -> (N, C p^2, H / p, W / p), lesson 06 (6.2): each p x p patch of a
    channel becomes p^2 channels of one pixel (row i, column j of the patch in channel
    c p^2 + i p + j)."""
    (x,) = as_tensors("space_to_depth", x)
    p = int(patch)
    if x.ndim != 4 or p < 1 or x.shape[2] % p or x.shape[3] % p:
        raise ValueError(f"space_to_depth: expected (N, C, H, W) with H and W multiples of the "
                         f"patch {p}, got {x.shape}")
    return Tensor._make(_to_depth(x.data, p), (x,), lambda g: (_to_space(g, p),),
                        "space_to_depth")


def depth_to_space(x, patch: int) -> Tensor:
    """(N, C p^2, H, W) -> (N, C, H p, W p), the inverse of ``space_to_depth``."""
    (x,) = as_tensors("depth_to_space", x)
    p = int(patch)
    if x.ndim != 4 or p < 1 or x.shape[1] % (p * p):
        raise ValueError(f"depth_to_space: expected (N, C p^2, H, W) with p = {p}, got "
                         f"{x.shape}")
    return Tensor._make(_to_space(x.data, p), (x,), lambda g: (_to_depth(g, p),),
                        "depth_to_space")
