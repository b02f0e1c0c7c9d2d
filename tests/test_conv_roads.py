"""conv2d's fast roads (``conv_fast``: 1x1, 'same', phases) against the reference road
(``conv.conv2d_reference``: im2col, one GEMM, col2im, lesson 05) on every convolution the
U-Net presets build, forward and all three gradients, in float64.

The shapes are not listed by hand: each preset's U-Net runs one forward pass with conv2d
wrapped to record what it is called with, so a preset added later is covered too.  The
reference road itself is checked against the windows of the padded input and against its
adjoint (eq. 5.4), so the two roads are not merely checked against each other.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import Tensor, backend, no_grad
from minidiff.nn import functional as F
from minidiff.nn.functional import conv, conv_fast


def _preset_configs():
    """(name, UNetConfig) of every U-Net preset, and the reference configuration."""
    from minidiff.models import REFERENCE_CONFIG
    from minidiff.config.build import model_config
    from minidiff.config.presets import PRESETS
    configs = [("reference", REFERENCE_CONFIG)]
    for name, preset in PRESETS.items():
        if preset is not None and preset.get("model", "unet") == "unet":
            configs.append((name, model_config(preset)))
    return configs


def _recorded_shapes(monkeypatch, config) -> set:
    """{(C, H, W, weight shape, stride, padding, groups)} of the conv2d calls of one forward
    pass of UNet(config) on one image."""
    from minidiff.models import UNet
    seen = set()
    inner = F.conv2d

    def recording(x, weight, bias=None, stride=1, padding=0, groups=1):
        seen.add((tuple(x.shape[1:]), tuple(weight.shape), stride, padding, groups))
        return inner(x, weight, bias, stride, padding, groups)

    monkeypatch.setattr(F, "conv2d", recording)
    backend.manual_seed(0)
    model = UNet(config)
    size = config.image_size
    with no_grad():
        x = Tensor(backend.randn(1, config.in_channels, size, size))
        model(x, backend.randint(0, 10, (1,)))
    monkeypatch.setattr(F, "conv2d", inner)
    return seen


@pytest.fixture(scope="module")
def unet_conv_shapes():
    shapes = set()
    with pytest.MonkeyPatch.context() as monkeypatch:
        for _, config in _preset_configs():
            shapes |= _recorded_shapes(monkeypatch, config)
    return sorted(shapes)


def _grads(fn, x, w, b, g):
    xs = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    y = fn(*xs)
    y.backward(g)
    return [backend.to_host(a) for a in (y.data, xs[0].grad, xs[1].grad, xs[2].grad)]


def test_the_presets_take_every_fast_road(unet_conv_shapes):
    """The U-Nets' convolutions all take a fast road, and between them every one of the three
    (so that the next test compares each with the reference)."""
    roads = {conv_fast.road((2,) + s[0], s[1], s[2], s[3]) for s in unet_conv_shapes}
    assert roads == {"pointwise", "flat", "phase"}, roads


def test_fast_roads_equal_the_reference_on_every_unet_conv(unet_conv_shapes):
    """y, dL/dx, dL/dW and dL/db of conv2d equal those of conv2d_reference (float64, random
    upstream gradient), shape by shape.  A wrong flip of the kernel in eq. 5.4b, a phase
    shifted by one, or a window edge left unzeroed changes dx or dW by O(1)."""
    rng = np.random.default_rng(0)
    for (c, h, w), w_shape, stride, padding, groups in unet_conv_shapes:
        n = 3
        x = backend.to_device(rng.standard_normal((n, c, h, w)))
        wt = backend.to_device(rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:])))
        b = backend.to_device(rng.standard_normal(w_shape[0]))
        ho = conv.conv_output_size(h, w_shape[2], stride, padding)
        wo = conv.conv_output_size(w, w_shape[3], stride, padding)
        g = backend.to_device(rng.standard_normal((n, w_shape[0], ho, wo)))

        def fast(*a):
            return F.conv2d(*a, stride, padding, groups)

        def reference(*a):
            return conv.conv2d_reference(*a, stride, padding, groups)
        for ours, theirs, what in zip(_grads(fast, x, wt, b, g), _grads(reference, x, wt, b, g),
                                      ("y", "dx", "dW", "db")):
            np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10,
                                       err_msg=f"{what} of conv {(c, h, w)} * {w_shape}, "
                                               f"stride {stride}, padding {padding}")


@settings(deadline=None, max_examples=20)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2),
       st.integers(3, 7), st.integers(3, 6), st.integers(0, 2 ** 16))
def test_reference_im2col_is_the_windows_and_col2im_its_adjoint(kernel, stride, padding, c, h,
                                                                w, seed):
    """im2col equals the windows of the zero-padded input read directly
    (``sliding_window_view``), and <im2col(x), C> = <x, col2im(C)> (eq. 5.4)."""
    if h + 2 * padding < kernel or w + 2 * padding < kernel:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, h, w))
    cols, (ho, wo) = conv.im2col(backend.to_device(x), kernel, stride, padding)
    padded = np.pad(x, ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride][:, :, :ho, :wo]       # (n, c, a, b, i, j)
    expected = windows.transpose(1, 4, 5, 0, 2, 3).reshape(cols.shape)
    np.testing.assert_array_equal(backend.to_host(cols), expected)
    c_any = rng.standard_normal(cols.shape)
    dx = backend.to_host(conv.col2im(backend.to_device(c_any), x.shape, kernel, stride, padding))
    lhs, rhs = (expected * c_any).sum(), (x * dx).sum()
    assert abs(lhs - rhs) <= 1e-10 * (1 + abs(lhs))
