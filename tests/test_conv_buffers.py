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
    np.testing.assert_array_equal(y1.data, kept)
    assert not np.shares_memory(y1.data, y2.data)

    y1.sum().backward()
    g1 = x1.grad.copy()
    (y2 * 2).sum().backward()
    np.testing.assert_array_equal(x1.grad, g1)
    np.testing.assert_allclose(x2.grad, 2 * g1, rtol=1e-5, atol=1e-5)
