"""Functional layers: gradient checks on hypothesis-drawn shapes, conv2d against a slow loop,
attention and group-norm properties (lesson 05)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import backend, tensor
from minidiff.nn import functional as F
from minidiff.gradcheck import gradcheck

FAST = settings(deadline=None, max_examples=20)


def t64(rng, *shape, scale=1.0, grad=True):
    return tensor(rng.standard_normal(shape) * scale, requires_grad=grad, dtype="float64")


def slow_conv2d(x, w, b, stride, padding, groups):
    """Seven nested loops, written straight from the definition (reference only)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - kh) // stride + 1
    wo = (wd + 2 * pw - kw) // stride + 1
    og = o // groups
    y = np.zeros((n, o, ho, wo))
    for ni in range(n):
        for oi in range(o):
            gi = oi // og
            for a in range(ho):
                for bb in range(wo):
                    total = b[oi] if b is not None else 0.0
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                total += (w[oi, ci, i, j] *
                                          xp[ni, gi * cg + ci, stride * a + i, stride * bb + j])
                    y[ni, oi, a, bb] = total
    return y


conv_cases = st.tuples(
    st.integers(1, 2),            # batch
    st.sampled_from([1, 2, 3]),   # groups
    st.integers(1, 2),            # in channels per group
    st.integers(1, 2),            # out channels per group
    st.sampled_from([1, 2, 3]),   # kernel
    st.sampled_from([1, 2, 3]),   # stride
    st.sampled_from([0, 1, 2]),   # padding
    st.integers(3, 6),            # height
    st.integers(3, 5),            # width
    st.booleans(),                # bias
)


@FAST
@given(conv_cases, st.integers(0, 2 ** 16))
def test_conv2d_matches_slow_loop_and_gradcheck(case, seed):
    n, groups, cg, og, k, stride, pad, h, w, has_bias = case
    rng = np.random.default_rng(seed)
    x = t64(rng, n, groups * cg, h, w)
    wt = t64(rng, groups * og, cg, k, k)
    b = t64(rng, groups * og) if has_bias else None
    out = F.conv2d(x, wt, b, stride, pad, groups)
    expected = slow_conv2d(x.numpy(), wt.numpy(), None if b is None else b.numpy(), stride,
                           pad, groups)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-10)
    args = (x, wt) + ((b,) if b is not None else ())
    assert gradcheck(lambda *a: F.conv2d(a[0], a[1], a[2] if len(a) > 2 else None, stride,
                                         pad, groups), *args)


@FAST
@given(st.sampled_from([1, 3, 5, 7]), st.sampled_from([1, 3, 5, 7]), st.integers(1, 6),
       st.integers(1, 6), st.sampled_from([1, 2]), st.integers(0, 2 ** 16))
def test_same_convolutions_match_slow_loop_and_gradcheck(kh, kw, h, w, groups, seed):
    """The flat road ('same' convolutions: stride 1, padding (k - 1) / 2) zeroes the window
    entries that fall outside the image (``_zero_outside``): rectangular kernels and images
    smaller than the kernel's reach check every one of its slices."""
    rng = np.random.default_rng(seed)
    padding = ((kh - 1) // 2, (kw - 1) // 2)
    x = t64(rng, 2, 2 * groups, h, w)
    wt = t64(rng, 3 * groups, 2, kh, kw)
    b = t64(rng, 3 * groups)
    out = F.conv2d(x, wt, b, 1, padding, groups)
    expected = slow_conv2d(x.numpy(), wt.numpy(), b.numpy(), 1, padding, groups)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-10)
    assert gradcheck(lambda *a: F.conv2d(*a, 1, padding, groups), x, wt, b)


@st.composite
def phase_geometries(draw):
    """(kernel, stride, padding, H, W) per axis whose output grid is the input grid divided
    by the stride: k - s <= 2p < k and H = s Ho, the geometries im2col and col2im build
    from the input's phases (stride 1 'same', the U-Net's 3x3 stride 2, 4x4 stride 2 ...)."""
    axes = []
    for _ in range(2):
        stride = draw(st.integers(1, 3))
        kernel = draw(st.integers(1, 5))
        paddings = [p for p in range(kernel) if kernel - stride <= 2 * p < kernel]
        if not paddings:
            kernel, paddings = stride, [0]     # k = s, p = 0 always fits
        axes.append((kernel, stride, draw(st.sampled_from(paddings)),
                     stride * draw(st.integers(1, 4))))
    return tuple(zip(*axes))


@FAST
@given(phase_geometries(), st.integers(0, 2 ** 16))
def test_im2col_and_col2im_by_phases_match_windows_and_adjoint(geometry, seed):
    """im2col from shifted phases equals the windows of the zero-padded input read directly
    (``sliding_window_view``), and col2im is its adjoint, <im2col(x), C> = <x, col2im(C)>;
    without ``overwrite_cols`` col2im leaves its argument as it was."""
    from minidiff.nn.functional import conv_fast
    kernel, stride, padding, size = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3) + size)
    assert conv_fast.phases_fit(x.shape, kernel, stride, padding)
    cols, (ho, wo) = conv_fast.phase_im2col(x, kernel, stride, padding)
    padded = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=(2, 3))
    windows = windows[:, :, ::stride[0], ::stride[1]][:, :, :ho, :wo]   # (n, c, a, b, i, j)
    expected = windows.transpose(1, 4, 5, 0, 2, 3).reshape(cols.shape)
    np.testing.assert_array_equal(backend.to_host(cols), expected)
    c_any = rng.standard_normal(cols.shape)
    kept = c_any.copy()
    dx = conv_fast.phase_col2im(c_any, x.shape, kernel, stride, padding)
    np.testing.assert_array_equal(c_any, kept)
    lhs, rhs = (expected * c_any).sum(), (x * backend.to_host(dx)).sum()
    assert abs(lhs - rhs) <= 1e-10 * (1 + abs(lhs))


def test_conv2d_float32_stays_float32_and_matches_loop():
    rng = np.random.default_rng(1)
    x = tensor(rng.standard_normal((2, 3, 7, 7)).astype("float32"))
    w = tensor(rng.standard_normal((4, 3, 3, 3)).astype("float32"))
    out = F.conv2d(x, w, None, 1, 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), slow_conv2d(x.numpy(), w.numpy(), None, 1, 1, 1),
                               rtol=1e-4, atol=1e-4)


def test_conv2d_rejects_mismatched_channels():
    x = tensor(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match="channels"):
        F.conv2d(x, tensor(np.zeros((2, 2, 3, 3))))


@FAST
@given(st.integers(1, 2), st.integers(1, 2), st.sampled_from([1, 2, 3]),
       st.sampled_from([1, 2]), st.sampled_from([0, 1]), st.integers(0, 2 ** 16))
def test_conv_transpose2d_is_the_adjoint_of_conv2d(c, o, k, stride, pad, seed):
    rng = np.random.default_rng(seed)
    pad = min(pad, k - 1)
    x = t64(rng, 2, c, 3, 4)
    w = t64(rng, c, o, k, k)
    b = t64(rng, o)
    y = F.conv_transpose2d(x, w, b, stride, pad)
    # <conv_transpose(x), z> = <x, conv(z)> for the bias-free part
    z = t64(rng, *y.shape, grad=False)
    lhs = ((y.numpy() - b.numpy().reshape(1, o, 1, 1)) * z.numpy()).sum()
    conv_z = F.conv2d(z, tensor(w.numpy().transpose(0, 1, 2, 3), dtype="float64"), None,
                      stride, pad)
    assert conv_z.shape == x.shape
    np.testing.assert_allclose(lhs, (conv_z.numpy() * x.numpy()).sum(), rtol=1e-9)
    assert gradcheck(lambda a, ww, bb: F.conv_transpose2d(a, ww, bb, stride, pad), x, w, b)


@FAST
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.booleans(),
       st.integers(0, 2 ** 16))
def test_linear_gradcheck(rows, fin, fout, has_bias, seed):
    rng = np.random.default_rng(seed)
    x, w = t64(rng, 2, rows, fin), t64(rng, fout, fin)
    b = t64(rng, fout) if has_bias else None
    np.testing.assert_allclose(F.linear(x, w, b).numpy(),
                               x.numpy() @ w.numpy().T + (0 if b is None else b.numpy()))
    args = (x, w) + ((b,) if b is not None else ())
    assert gradcheck(lambda *a: F.linear(a[0], a[1], a[2] if len(a) > 2 else None), *args)


@FAST
@given(st.sampled_from([(1, 2), (2, 2), (3, 6), (4, 4)]), st.integers(1, 2),
       st.sampled_from([(3, 3), (2, 5), (1, 1)]), st.booleans(), st.integers(0, 2 ** 16))
def test_group_norm_gradcheck_and_statistics(groups_channels, n, hw, affine, seed):
    groups, c = groups_channels
    rng = np.random.default_rng(seed)
    x = t64(rng, n, c, *hw, scale=3.0)
    x.data += 5.0  # an offset the normalization must remove
    out = F.group_norm(x, groups).numpy().reshape(n, groups, -1)
    var_x = x.numpy().reshape(n, groups, -1).var(axis=-1)
    np.testing.assert_allclose(out.mean(axis=-1), 0, atol=1e-10)
    np.testing.assert_allclose(out.var(axis=-1), var_x / (var_x + 1e-5), rtol=1e-8)  # eps
    w, b = t64(rng, c), t64(rng, c)
    if affine:
        assert gradcheck(lambda a, ww, bb: F.group_norm(a, groups, ww, bb), x, w, b)
    else:
        assert gradcheck(lambda a: F.group_norm(a, groups), x)


@FAST
@given(st.integers(1, 3), st.sampled_from([(4,), (2, 3)]), st.booleans(),
       st.integers(0, 2 ** 16))
def test_layer_norm_gradcheck(rows, shape, affine, seed):
    rng = np.random.default_rng(seed)
    x = t64(rng, rows, *shape, scale=2.0)
    out = F.layer_norm(x, shape).numpy().reshape(rows, -1)
    np.testing.assert_allclose(out.mean(axis=-1), 0, atol=1e-10)
    if affine:
        w, b = t64(rng, *shape), t64(rng, *shape)
        assert gradcheck(lambda a, ww, bb: F.layer_norm(a, shape, ww, bb), x, w, b)
    else:
        assert gradcheck(lambda a: F.layer_norm(a, shape), x)


masks = st.sampled_from(["none", "causal", "padding", "additive"])


def _mask(kind, lq, lk, rng):
    if kind == "none":
        return None
    if kind == "causal":
        return tensor(np.tril(np.ones((lq, lk), dtype=bool), k=lk - lq))
    if kind == "padding":
        keep = np.ones((2, 1, 1, lk), dtype=bool)
        keep[1, ..., rng.integers(1, lk + 1):] = False
        return tensor(keep)
    return tensor(np.where(rng.random((lq, lk)) < 0.3, -np.inf, 0.0))


@FAST
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), masks,
       st.integers(0, 2 ** 16))
def test_attention_gradcheck_and_weights(lq, lk, d, dv, mask_kind, seed):
    rng = np.random.default_rng(seed)
    lq = min(lq, lk) if mask_kind == "causal" else lq
    q, k, v = t64(rng, 2, 2, lq, d), t64(rng, 2, 2, lk, d), t64(rng, 2, 2, lk, dv)
    mask = _mask(mask_kind, lq, lk, rng)
    weights = backend.to_host(F.attention_weights(q, k, mask))
    assert weights.shape == (2, 2, lq, lk)
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-12)
    if mask is not None:
        keep = np.broadcast_to(backend.to_host(mask.data), weights.shape)
        keep = keep if keep.dtype == bool else np.isfinite(keep)
        rows_with_any = keep.any(axis=-1, keepdims=True)
        assert (weights[~keep & np.broadcast_to(rows_with_any, keep.shape)] == 0).all()
    out = F.scaled_dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(out.numpy(), weights @ v.numpy(), rtol=1e-10, atol=1e-12)
    assert gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, mask), q, k, v)


def test_attention_matches_explicit_formula():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((3, 5, 4)) for _ in range(3))
    s = q @ k.transpose(0, 2, 1) / 2.0
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = F.scaled_dot_product_attention(tensor(q), tensor(k), tensor(v))
    np.testing.assert_allclose(out.numpy(), p @ v, rtol=1e-5, atol=1e-6)


def test_causal_mask_ignores_future_values():
    rng = np.random.default_rng(4)
    q, k, v = (tensor(rng.standard_normal((1, 4, 3)), dtype="float64") for _ in range(3))
    causal = tensor(np.tril(np.ones((4, 4), dtype=bool)))
    before = F.scaled_dot_product_attention(q, k, v, causal).numpy()
    v.data[:, 3] += 100.0  # only the last query may see the last value
    after = F.scaled_dot_product_attention(q, k, v, causal).numpy()
    np.testing.assert_array_equal(before[:, :3], after[:, :3])
    assert not np.allclose(before[:, 3], after[:, 3])


@FAST
@given(st.integers(1, 3), st.integers(1, 3), st.sampled_from([2, 3]), st.integers(0, 2 ** 16))
def test_upsample_and_avg_pool_gradcheck(h, w, s, seed):
    rng = np.random.default_rng(seed)
    x = t64(rng, 2, 2, h, w)
    up = F.upsample_nearest(x, s).numpy()
    np.testing.assert_array_equal(up, x.numpy().repeat(s, axis=2).repeat(s, axis=3))
    assert gradcheck(lambda a: F.upsample_nearest(a, s), x)
    big = t64(rng, 1, 2, h + s, w + s)
    pooled = F.avg_pool2d(big, s).numpy()
    hh, ww = (h + s) // s, (w + s) // s
    expected = big.numpy()[:, :, :hh * s, :ww * s].reshape(1, 2, hh, s, ww, s).mean((3, 5))
    np.testing.assert_allclose(pooled, expected)
    assert gradcheck(lambda a: F.avg_pool2d(a, s), big)
    assert gradcheck(lambda a: F.avg_pool2d(a, 3, 1), t64(rng, 1, 1, 4, 5))


@FAST
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 2, 3]),
       st.integers(0, 2 ** 16))
def test_space_to_depth_against_its_definition_and_gradcheck(c, h, w, p, seed):
    """y[n, c p^2 + i p + j, a, b] = x[n, c, p a + i, p b + j], written as loops; a wrong
    channel order (i and j swapped, or c last) fails for p > 1 on all but constant inputs."""
    rng = np.random.default_rng(seed)
    x = t64(rng, 2, c, h * p, w * p)
    y = F.space_to_depth(x, p).numpy()
    expected = np.zeros((2, c * p * p, h, w))
    for ci in range(c):
        for i in range(p):
            for j in range(p):
                expected[:, ci * p * p + i * p + j] = x.numpy()[:, ci, i::p, j::p]
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(F.depth_to_space(F.space_to_depth(x, p), p).numpy(), x.numpy())
    assert gradcheck(lambda a: F.space_to_depth(a, p), x)
    assert gradcheck(lambda a: F.depth_to_space(a, p), t64(rng, 1, c * p * p, h, w))


def test_space_to_depth_refuses_sizes_the_patch_does_not_divide():
    with pytest.raises(ValueError, match=r"multiples of the patch 2, got \(1, 1, 5, 4\)"):
        F.space_to_depth(tensor(np.zeros((1, 1, 5, 4))), 2)
    with pytest.raises(ValueError, match=r"\(N, C p\^2, H, W\) with p = 2"):
        F.depth_to_space(tensor(np.zeros((1, 3, 2, 2))), 2)


def test_embedding_gradcheck_with_repeated_indices():
    rng = np.random.default_rng(5)
    weight = t64(rng, 5, 3)
    idx = tensor(np.array([[0, 2, 2], [4, 0, 1]]))
    out = F.embedding(idx, weight)
    np.testing.assert_array_equal(out.numpy(), weight.numpy()[idx.numpy()])
    assert gradcheck(lambda w: F.embedding(idx, w), weight)


def test_dropout_scales_kept_and_gradient_matches_mask():
    backend.manual_seed(0)
    x = tensor(np.ones((200, 50)), requires_grad=True, dtype="float64")
    y = F.dropout(x, 0.25, training=True)
    values = y.numpy()
    assert set(np.unique(values)) <= {0.0, 1.0 / 0.75}
    assert abs((values == 0).mean() - 0.25) < 0.02
    y.sum().backward()
    np.testing.assert_array_equal(backend.to_host(x.grad), values)
    assert F.dropout(x, 0.25, training=False) is x


@FAST
@given(st.integers(1, 4), st.integers(2, 5), st.integers(0, 2 ** 16))
def test_losses_gradcheck(n, k, seed):
    rng = np.random.default_rng(seed)
    pred, target = t64(rng, n, k), t64(rng, n, k)
    np.testing.assert_allclose(F.mse_loss(pred, target).item(),
                               ((pred.numpy() - target.numpy()) ** 2).mean())
    assert gradcheck(F.mse_loss, pred, target)
    labels = tensor(rng.integers(0, k, size=n))
    logits = t64(rng, n, k, scale=3.0)
    z = logits.numpy()
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(F.cross_entropy(logits, labels).item(),
                               -logp[np.arange(n), labels.numpy()].mean())
    assert gradcheck(lambda z: F.cross_entropy(z, labels), logits)


def test_conv2d_scratch_buffers_are_never_shared_between_live_graphs():
    """Two same-shaped convolutions alive at once, and layouts whose buffers coincide in
    size, must not see each other's scratch data (conv2d reuses buffers, see _workspace)."""
    rng = np.random.default_rng(7)
    x = t64(rng, 2, 3, 6, 6)
    w1, w2 = t64(rng, 3, 3, 3, 3), t64(rng, 3, 3, 3, 3)
    loss = (F.conv2d(F.conv2d(x, w1, None, 1, 1), w2, None, 1, 1) *
            F.conv2d(x, w2, None, 1, 1)).sum()
    loss.backward()
    grads = [backend.to_host(t.grad).copy() for t in (x, w1, w2)]
    for t in (x, w1, w2):
        t.grad = None
    xs, w1s, w2s = x.numpy(), w1.numpy(), w2.numpy()

    def reference(a, b, c):
        return (F.conv2d(F.conv2d(a, b, None, 1, 1), c, None, 1, 1) * F.conv2d(a, c, None, 1, 1))
    assert gradcheck(reference, x, w1, w2)
    loss2 = reference(tensor(xs, requires_grad=True, dtype="float64"),
                      tensor(w1s, dtype="float64"), tensor(w2s, dtype="float64")).sum()
    np.testing.assert_allclose(loss2.item(), loss.item())
    # the same flat buffer size from two geometries: 8x8 kernel 3 vs 6x7 kernel 5
    a = t64(rng, 1, 1, 8, 8, grad=False)
    b = t64(rng, 1, 1, 6, 7, grad=False)
    k3, k5 = t64(rng, 1, 1, 3, 3, grad=False), t64(rng, 1, 1, 5, 5, grad=False)
    for _ in range(2):
        np.testing.assert_allclose(F.conv2d(a, k3, None, 1, 1).numpy(),
                                   slow_conv2d(a.numpy(), k3.numpy(), None, 1, 1, 1))
        np.testing.assert_allclose(F.conv2d(b, k5, None, 1, 2).numpy(),
                                   slow_conv2d(b.numpy(), k5.numpy(), None, 1, 2, 1))
