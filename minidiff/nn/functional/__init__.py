"""Functional layers (lesson 05): each computes its forward and, beside it, a hand-derived
backward.  NCHW images; conv weights (out, in, kh, kw); linear weights (out, in).

* ``conv``: the reference road of lesson 05 (im2col + one GEMM + col2im: conv2d_reference),
  conv_transpose2d, im2col, col2im; ``conv_fast``: conv2d, which takes the faster roads where
  they fit (1x1, 'same', phases) and the reference road elsewhere
* ``norm``: group_norm, layer_norm (fused backward)
* ``attention``: scaled_dot_product_attention (fused softmax backward)
* ``basic``: linear, embedding, dropout, upsample_nearest, avg_pool2d, space_to_depth,
  depth_to_space
* ``losses``: mse_loss, cross_entropy
"""
from minidiff.nn.functional.attention import attention_weights, scaled_dot_product_attention
from minidiff.nn.functional.basic import (avg_pool2d, depth_to_space, dropout, embedding, linear,
                                          space_to_depth, upsample_nearest)
from minidiff.nn.functional.conv import col2im, conv_transpose2d, im2col
from minidiff.nn.functional.conv_fast import conv2d
from minidiff.nn.functional.losses import cross_entropy, mse_loss
from minidiff.nn.functional.norm import group_norm, layer_norm
from minidiff.ops import silu

__all__ = ["conv2d", "conv_transpose2d", "im2col", "col2im", "group_norm", "layer_norm",
           "scaled_dot_product_attention", "attention_weights", "linear", "embedding",
           "dropout", "upsample_nearest", "avg_pool2d", "space_to_depth", "depth_to_space",
           "mse_loss", "cross_entropy", "silu"]
