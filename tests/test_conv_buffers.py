"""conv2d reuses scratch buffers for speed; no result it returns may alias one of them.

Regression: at batch 1 the output transpose (1, 0, 2, 3) is free, so ``ascontiguousarray``
returned a view of the reused GEMM buffer and the next conv of the same shape overwrote an
activation the U-Net had stored as a skip.
"""
import numpy as np
import pytest

import minidiff as md
from minidiff import backend
from minidiff.nn import functional as F


@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (3, 1, 1), (1, 1, 0), (3, 1, 0)])
@pytest.mark.parametrize("batch", [1, 2])
def test_outputs_and_input_gradients_survive_the_next_call(kernel, stride, padding, batch):
    w = md.Tensor(backend.randn(4, 3, kernel, kernel), requires_grad=True)
    x1 = md.Tensor(backend.randn(batch, 3, 6, 6), requires_grad=True)
    x2 = md.Tensor(backend.randn(batch, 3, 6, 6), requires_grad=True)
    y1 = F.conv2d(x1, w, stride=stride, padding=padding)
    kept = y1.data.copy()
    y2 = F.conv2d(x2, w, stride=stride, padding=padding)
    np.testing.assert_array_equal(backend.to_host(y1.data), backend.to_host(kept))
    assert not np.shares_memory(y1.data, y2.data)

    y1.sum().backward()
    g1 = backend.to_host(x1.grad).copy()
    (y2 * 2).sum().backward()
    np.testing.assert_array_equal(backend.to_host(x1.grad), g1)
    np.testing.assert_allclose(backend.to_host(x2.grad), 2 * g1, rtol=1e-5, atol=1e-5)


def test_layers_of_different_shapes_share_scratch_without_mixing():
    """Scratch blocks are shared by every shape of a purpose: interleaving a large and a
    small convolution (forward A, forward B, backward B, backward A) must give the gradients
    each gets alone."""
    from minidiff.nn.functional import _workspace

    def run(order):
        backend.manual_seed(3)
        wa = md.Tensor(backend.randn(5, 3, 3, 3), requires_grad=True)
        wb = md.Tensor(backend.randn(2, 4, 3, 3), requires_grad=True)
        xa = md.Tensor(backend.randn(2, 3, 9, 9), requires_grad=True)
        xb = md.Tensor(backend.randn(1, 4, 5, 5), requires_grad=True)
        if order == "alone":
            F.conv2d(xa, wa, padding=1).sum().backward()
            (F.conv2d(xb, wb, padding=1) * 3).sum().backward()
        else:
            ya, yb = F.conv2d(xa, wa, padding=1), F.conv2d(xb, wb, padding=1)
            (yb * 3).sum().backward()
            ya.sum().backward()
        return [backend.to_host(t.grad).copy() for t in (wa, wb, xa, xb)]

    _workspace.clear()
    alone = run("alone")
    mixed = run("mixed")
    for a, b in zip(alone, mixed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    small = _workspace.buffer("test.tag", (2, 3), "float32", backend.xp())
    large = _workspace.buffer("test.tag", (4, 5), "float32", backend.xp())
    again = _workspace.buffer("test.tag", (2, 3), "float32", backend.xp())
    assert np.shares_memory(large, again) and not np.shares_memory(small, large)


@pytest.mark.parametrize("chunk_bytes", [1, 700])
@pytest.mark.parametrize("c,o", [(3, 4), (4, 3)])
@pytest.mark.parametrize("stride", [1, 2])
def test_chunked_columns_give_the_same_convolution(monkeypatch, chunk_bytes, c, o, stride):
    """conv2d builds its columns a few images at a time (``CHUNK_BYTES``), on the flat road
    (stride 1) and on the phase road (stride 2, whose col2im adds each chunk's shifted
    columns across the chunk's edges); one image per chunk, or chunks that do not divide the
    batch, must give what one chunk gives."""
    from minidiff.nn.functional import conv_fast

    def run():
        backend.manual_seed(1)
        x = md.Tensor(backend.randn(5, c, 6, 8, dtype="float64"), requires_grad=True)
        w = md.Tensor(backend.randn(o, c, 3, 3, dtype="float64"), requires_grad=True)
        b = md.Tensor(backend.randn(o, dtype="float64"), requires_grad=True)
        assert conv_fast.road(x.shape, w.shape, stride, 1) == ("flat", "phase")[stride - 1]
        y = F.conv2d(x, w, b, stride=stride, padding=1)
        (y * y).sum().backward()
        return [backend.to_host(a).copy() for a in (y.data, x.grad, w.grad, b.grad)]

    whole = run()
    monkeypatch.setattr(conv_fast, "CHUNK_BYTES", chunk_bytes)
    assert conv_fast._images_per_chunk(c * 9 * 6 * 8 * 8 // stride ** 2, 5) < 5
    for a, b in zip(whole, run()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
