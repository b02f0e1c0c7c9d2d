"""Differentiable operations on ``Tensor`` (lesson 00).

Each operation computes its result and, right beneath it, a ``backward(g)`` closure that maps
the output's gradient ``g`` to one gradient per input (``None`` where none is needed).  The
engine (``minidiff.tensor``) sums gradients back over broadcast axes, so the closures may
return gradients in the broadcast shape.

* ``arith``: + - * / neg ** matmul, exp log sqrt abs, where, clip
* ``reduce``: sum mean max var
* ``shape``: reshape transpose getitem concatenate stack pad
* ``activation``: tanh sigmoid relu silu gelu softmax log_softmax
* ``special``: normal_cdf (Phi, for the discretized decoder of lesson 04)
"""
from minidiff.ops.activation import gelu, log_softmax, relu, sigmoid, silu, softmax, tanh
from minidiff.ops.arith import (abs, add, clip, div, exp, log, matmul, mul, neg, power, sqrt, sub,
                                where)
from minidiff.ops.reduce import max, mean, sum, var
from minidiff.ops.shape import concatenate, getitem, pad, reshape, stack, transpose
from minidiff.ops.special import normal_cdf

__all__ = ["add", "sub", "mul", "div", "neg", "power", "matmul", "exp", "log", "sqrt", "abs",
           "where", "clip", "sum", "mean", "max", "var", "reshape", "transpose", "getitem",
           "concatenate", "stack", "pad", "tanh", "sigmoid", "relu", "silu", "gelu", "softmax",
           "log_softmax", "normal_cdf"]
