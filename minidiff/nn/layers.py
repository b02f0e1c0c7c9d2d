"""The standard layers as ``Module``s over ``minidiff.nn.functional`` (lesson 05).

Initialisation follows PyTorch's defaults, so results are comparable:

* ``Linear`` and ``Conv2d``: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), where
  fan_in = in_features (Linear) or in_channels/groups * kh * kw (Conv2d).  (PyTorch writes the
  weight bound as kaiming_uniform with a = sqrt(5), which is the same bound.)
* ``GroupNorm`` and ``LayerNorm``: weight 1, bias 0.
* ``Embedding``: weight ~ N(0, 1).
"""
from __future__ import annotations

import math

from minidiff import backend
from minidiff.nn import functional as F
from minidiff.nn.module import Module, Parameter

__all__ = ["Linear", "Conv2d", "ConvTranspose2d", "GroupNorm", "LayerNorm", "SiLU",
           "Dropout", "Embedding", "Identity"]


def _uniform(bound: float, *shape) -> Parameter:
    return Parameter((backend.rand(*shape) * 2.0 - 1.0) * bound)


class Linear(Module):
    """y = x W^T + b with W (out, in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = _uniform(bound, out_features, in_features)
        self.bias = _uniform(bound, out_features) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution, weight (out, in/groups, k, k), NCHW."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: channels {in_channels}->{out_channels} do not split "
                             f"into {groups} groups")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = (kernel_size, stride,
                                                                    padding, groups)
        fan_in = in_channels // groups * kernel_size * kernel_size
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = _uniform(bound, out_channels, in_channels // groups, kernel_size,
                               kernel_size)
        self.bias = _uniform(bound, out_channels) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}")


class ConvTranspose2d(Module):
    """Transposed convolution, weight (in, out, k, k); fan_in as PyTorch computes it
    (weight.shape[1] * k * k)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.stride, self.padding = stride, padding
        bound = 1.0 / math.sqrt(out_channels * kernel_size * kernel_size)
        self.weight = _uniform(bound, in_channels, out_channels, kernel_size, kernel_size)
        self.bias = _uniform(bound, out_channels) if bias else None

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding)


class GroupNorm(Module):
    """Normalize each group of channels per sample; affine weight 1, bias 0."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into "
                             f"{num_groups} groups")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        xp = backend.xp()
        self.weight = Parameter(xp.ones(num_channels, dtype=backend.default_dtype())) \
            if affine else None
        self.bias = Parameter(xp.zeros(num_channels, dtype=backend.default_dtype())) \
            if affine else None

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}"


class LayerNorm(Module):
    """Normalize over the trailing ``normalized_shape`` axes; weight 1, bias 0."""

    def __init__(self, normalized_shape, eps: float = 1e-5):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
            tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        xp = backend.xp()
        self.weight = Parameter(xp.ones(shape, dtype=backend.default_dtype()))
        self.bias = Parameter(xp.zeros(shape, dtype=backend.default_dtype()))

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class SiLU(Module):
    """x sigmoid(x), with the fused backward of ``minidiff.ops.silu``."""

    def forward(self, x):
        return F.silu(x)


class Identity(Module):
    def forward(self, x):
        return x


class Dropout(Module):
    """Drop with probability p in training mode; the identity in eval mode."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class Embedding(Module):
    """A lookup table of ``num`` vectors of size ``dim``, initialised N(0, 1)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.weight = Parameter(backend.randn(num_embeddings, embedding_dim))

    def forward(self, indices):
        return F.embedding(indices, self.weight)
