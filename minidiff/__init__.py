"""minidiff: diffusion models (DDPM) and latent diffusion from scratch on NumPy / CuPy.

Start with ``lessons/00_autograd.py`` and the README.
"""
from minidiff import ops
from minidiff.backend import (BackendMismatchError, BackendUnavailableError, default_dtype,
                              get_backend, manual_seed, set_backend, set_default_dtype, xp)
from minidiff.ops import (abs, clip, concatenate, exp, gelu, log, log_softmax, matmul, max, mean,
                          pad, relu, sigmoid, silu, softmax, sqrt, stack, sum, tanh, transpose,
                          var, where)
from minidiff.tensor import Tensor, as_tensor, is_grad_enabled, no_grad, tensor

__version__ = "0.1.0"

__all__ = [
    "Tensor", "tensor", "as_tensor", "no_grad", "is_grad_enabled", "ops",
    "set_backend", "get_backend", "xp", "manual_seed", "set_default_dtype", "default_dtype",
    "BackendMismatchError", "BackendUnavailableError",
    "exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu", "silu", "gelu", "softmax",
    "log_softmax", "sum", "mean", "max", "var", "matmul", "transpose", "concatenate", "stack",
    "pad", "where", "clip",
]
