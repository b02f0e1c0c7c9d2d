"""Group norm and layer norm with fused, hand-derived backward passes (lesson 05).

Both normalize a vector x of m numbers (a group of channels x pixels for group norm, the last
axes for layer norm) to zero mean and unit variance, then scale and shift per channel:

    mu = mean(x),  var = mean((x - mu)^2),  r = 1 / sqrt(var + eps)
    xhat = (x - mu) r,           y = gamma xhat + beta

Backward, written once instead of as a chain of a dozen primitive nodes.  With
gh = dL/dxhat = gamma g, differentiate xhat_i = (x_i - mu) r:

    dxhat_i/dx_k = r (delta_ik - 1/m) - (x_i - mu) r^3 (x_k - mu) / m
                 = r (delta_ik - 1/m - xhat_i xhat_k / m)

(using d var/dx_k = 2 (x_k - mu)/m and dr/dvar = -r^3/2).  Summing against gh:

    dL/dx = r (gh - mean(gh) - xhat mean(gh xhat))
    dL/dgamma = sum g xhat,     dL/dbeta = sum g       (over everything but the channel)

Statistics are computed in one reshape to (N, G, m).  Layer norm keeps xhat and r for the
backward pass; group norm keeps only mu and r (x itself is held by the graph) and works per
(sample, channel) row so that the per-channel gamma folds into per-row factors (see
``group_norm``).
"""
from minidiff import backend
from minidiff.backend import threads
from minidiff.nn.functional._reduce import row_dots, row_sums
from minidiff.ops._inputs import as_tensors
from minidiff.tensor import Tensor

__all__ = ["group_norm", "layer_norm"]


def _normalize(xp, xg, eps):
    """xhat and r = 1/sqrt(var + eps) of each row of xg (last axis)."""
    mu = xg.mean(axis=-1, keepdims=True)
    xhat = xg - mu
    var = xp.mean(xhat * xhat, axis=-1, keepdims=True)
    r = 1.0 / xp.sqrt(var + eps)
    xhat *= r
    return xhat, r


def _dnormalize(gh, xhat, r):
    """dL/dx = r (gh - mean(gh) - xhat mean(gh xhat)), rows along the last axis (gh reused)."""
    a = gh.mean(axis=-1, keepdims=True)
    b = (gh * xhat).mean(axis=-1, keepdims=True)
    gh -= a
    gh -= xhat * b
    gh *= r
    return gh


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalize each (sample, group of C/G channels) over its channels and pixels, then
    y = gamma[c] xhat + beta[c].  x is (N, C, ...), weight and bias (C,).

    The forward pass computes the exact two-pass variance from the centered x and scales
    that same array in place: y = (x - mu) (r gamma) + beta.  The backward pass keeps only
    x (which the graph holds anyway) and the per-group mu and r: the group means of gh and
    gh xhat come from the per-(sample, channel) sums sum_s g and
    sum_s g (x - mu) = sum_s g x - mu sum_s g, and then
    dL/dx = (r gamma) g - (r^2 B) x + (mu r^2 B - r A), per-row factors times two arrays.
    """
    parents = as_tensors("group_norm", *[t for t in (x, weight, bias) if t is not None])
    x = parents[0]
    xp = backend.array_module_of(x.data)
    n, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(f"group_norm: {c} channels do not split into {num_groups} groups")
    has_w, has_b = weight is not None, bias is not None
    G, cg = num_groups, c // num_groups
    s = x.data[0, 0].size
    m = cg * s
    xg = x.data.reshape(n, G, m)
    mu = (row_sums(xg) / m)[..., None]                         # (n, G, 1)
    y = xp.empty_like(xg)

    def center(lo, hi):                                         # two-pass variance
        xp.subtract(xg[lo:hi], mu[lo:hi], out=y[lo:hi])
    threads.split(center, n, y)
    r = 1.0 / xp.sqrt(row_dots(y, y)[..., None] / m + eps)     # (n, G, 1)
    gamma = parents[1].data.reshape(1, G, cg) if has_w else xp.ones((1, G, cg), x.dtype)
    scale = (r * gamma).reshape(n, c, 1)                        # r gamma per (n, c)
    y = y.reshape(n, c, s)
    beta = parents[1 + has_w].data.reshape(1, c, 1) if has_b else None

    def scale_shift(lo, hi):
        y[lo:hi] *= scale[lo:hi]
        if beta is not None:
            y[lo:hi] += beta
    threads.split(scale_shift, n, y)

    def backward(g):
        g3, x3 = g.reshape(n, c, s), x.data.reshape(n, c, s)
        sum_g = row_sums(g3).reshape(n, G, cg)                  # sum_s g
        sum_gx = row_dots(g3, x3).reshape(n, G, cg)
        sum_gc = sum_gx - mu * sum_g                            # sum_s g (x - mu)
        a = (gamma * sum_g).sum(axis=-1, keepdims=True) / m     # mean(gh)
        b = (gamma * sum_gc).sum(axis=-1, keepdims=True) * (r / m)  # mean(gh xhat)
        x_factor = xp.broadcast_to(r * r * b, (n, G, cg)).reshape(n, c, 1)
        offset = xp.broadcast_to(mu * r * r * b - r * a, (n, G, cg)).reshape(n, c, 1)
        dx = xp.empty_like(g3)

        def dx_rows(lo, hi):
            xp.multiply(g3[lo:hi], scale[lo:hi], out=dx[lo:hi])
            dx[lo:hi] -= x3[lo:hi] * x_factor[lo:hi]
            dx[lo:hi] += offset[lo:hi]
        threads.split(dx_rows, n, dx)
        grads = [dx.reshape(x.shape)]
        if has_w:
            grads.append((sum_gc * r).sum(axis=0).reshape(c))
        if has_b:
            grads.append(sum_g.sum(axis=0).reshape(c))
        return grads
    return Tensor._make(y.reshape(x.shape), tuple(parents), backward, "group_norm")


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalize over the last len(normalized_shape) axes; y = gamma xhat + beta with
    weight and bias of ``normalized_shape``."""
    parents = as_tensors("layer_norm", *[t for t in (x, weight, bias) if t is not None])
    x = parents[0]
    xp = backend.array_module_of(x.data)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(f"layer_norm: input {x.shape} does not end in {shape}")
    m = 1
    for s in shape:
        m *= s
    xhat, r = _normalize(xp, x.data.reshape(-1, m), eps)
    has_w, has_b = weight is not None, bias is not None
    w = parents[1].data.reshape(m) if has_w else None
    y = xhat * w if has_w else xhat.copy()
    if has_b:
        y += parents[1 + has_w].data.reshape(m)

    def backward(g):
        g = g.reshape(-1, m)
        gh = g * w if has_w else g.copy()
        grads = [_dnormalize(gh, xhat, r).reshape(x.shape)]
        if has_w:
            grads.append((g * xhat).sum(axis=0).reshape(shape))
        if has_b:
            grads.append(g.sum(axis=0).reshape(shape))
        return grads
    return Tensor._make(y.reshape(x.shape), tuple(parents), backward, "layer_norm")
