"""The U-Net's bricks against their formulas written out in NumPy (lesson 06), so that a block
wired wrongly (a residual dropped, the time embedding ignored, keys taken from the queries, the
output activation skipped) fails here and not only in a lesson:

    ResBlock:  h = conv3x3(SiLU(GN(x))) + Linear(SiLU(emb));  out = skip(x) + conv3x3(SiLU(GN(h)))
    Attention: q, k, v = split(conv1x1(GN(x)));  out = x + conv1x1(softmax(q k^T / sqrt(d)) v)
    UNet head: eps = conv3x3(SiLU(GN(h)))
"""
import numpy as np

from minidiff import backend
from minidiff.models.blocks import AttentionBlock, ResBlock
from minidiff.models.unet import UNet
from minidiff.nn import Module
from minidiff.tensor import Tensor, no_grad
from tests.test_diffusion_strategies import dev, h


def _gn(x, groups, weight, bias, eps):
    b, c = x.shape[:2]
    g = x.reshape(b, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return g.reshape(x.shape) * weight[None, :, None, None] + bias[None, :, None, None]


def _conv(x, weight, bias):
    """'same' convolution, stride 1, odd square kernel, by shifted sums."""
    k = weight.shape[-1]
    p = k // 2
    height, width = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((x.shape[0], weight.shape[0], height, width))
    for i in range(k):
        for j in range(k):
            out += np.einsum("bchw,oc->bohw", padded[:, :, i:i + height, j:j + width],
                             weight[:, :, i, j])
    return out + bias[None, :, None, None]


def _silu(x):
    return x / (1 + np.exp(-x))


def _p(module, name):
    return h(getattr(module, name).data).astype(np.float64)


def test_resblock_is_its_formula(float64):
    backend.manual_seed(0)
    block = ResBlock(4, 8, emb_dim=6, groups=2)
    for p in block.parameters():                 # non-trivial biases and GN affine parameters
        p.data = p.data + 0.1 * backend.randn(*p.shape, dtype=p.dtype)
    x, emb = np.random.default_rng(0).standard_normal((2, 4, 5, 5)), \
        np.random.default_rng(1).standard_normal((2, 6))
    n1, n2 = block.norm1, block.norm2
    hid = _conv(_silu(_gn(x, 2, _p(n1, "weight"), _p(n1, "bias"), n1.eps)),
                _p(block.conv1, "weight"), _p(block.conv1, "bias"))
    hid = hid + (_silu(emb) @ _p(block.emb_proj, "weight").T
                 + _p(block.emb_proj, "bias"))[:, :, None, None]
    hid = _conv(_silu(_gn(hid, 2, _p(n2, "weight"), _p(n2, "bias"), n2.eps)),
                _p(block.conv2, "weight"), _p(block.conv2, "bias"))
    want = _conv(x, _p(block.skip, "weight"), _p(block.skip, "bias")) + hid
    with no_grad():
        got = h(block(Tensor(dev(x)), Tensor(dev(emb))))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


def test_attention_block_is_its_formula(float64):
    backend.manual_seed(1)
    block = AttentionBlock(8, heads=2, groups=2)
    for p in block.parameters():
        p.data = p.data + 0.1 * backend.randn(*p.shape, dtype=p.dtype)
    x = np.random.default_rng(2).standard_normal((2, 8, 3, 4))
    b, c, height, width = x.shape
    d = c // 2
    qkv = _conv(_gn(x, 2, _p(block.norm, "weight"), _p(block.norm, "bias"), block.norm.eps),
                _p(block.qkv, "weight"), _p(block.qkv, "bias"))
    qkv = qkv.reshape(b, 3, 2, d, height * width)        # (B, q/k/v, head, d, pixel)
    out = np.zeros((b, 2, d, height * width))
    for i in range(b):
        for head in range(2):
            q, k, v = (qkv[i, j, head].T for j in range(3))      # (pixels, d)
            scores = q @ k.T / np.sqrt(d)
            weights = np.exp(scores - scores.max(1, keepdims=True))
            weights /= weights.sum(1, keepdims=True)
            out[i, head] = (weights @ v).T
    want = x + _conv(out.reshape(b, c, height, width), _p(block.proj_out, "weight"),
                     _p(block.proj_out, "bias"))
    with no_grad():
        got = h(block(Tensor(dev(x))))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


class _Keep(Module):
    """Wraps a module and keeps its last output."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.last = inner, None

    def forward(self, x):
        self.last = self.inner(x)
        return self.last


def test_unet_output_head_is_conv_of_silu_of_groupnorm(float64):
    backend.manual_seed(2)
    model = UNet(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(), groups=2)
    model.norm_out = _Keep(model.norm_out)
    x = backend.randn(2, 1, 8, 8, dtype="float64")
    with no_grad():
        got = h(model(Tensor(x), dev(np.array([3, 40]))))
    normed = h(model.norm_out.last).astype(np.float64)
    want = _conv(_silu(normed), _p(model.conv_out, "weight"), _p(model.conv_out, "bias"))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
