"""The sinusoidal timestep embedding (lesson 06, equation (6.1)).

A network that denoises at every step t must be told t.  As in the Transformer's positional
encoding, t becomes a vector of cosines and sines at geometrically spaced frequencies:

    omega_i = exp(-ln(10000) i / (d/2)),   i = 0 .. d/2 - 1
    emb(t)  = [cos(t omega_0), ..., cos(t omega_{d/2-1}), sin(t omega_0), ..., sin(t omega_{d/2-1})]

Nearby steps get similar vectors, distant ones nearly orthogonal ones, and an MLP after it can
form any smooth function of t.  Here t is the 0-based step index (see ``NoiseSchedule``).
"""
import math

from minidiff import backend
from minidiff.tensor import Tensor

__all__ = ["timestep_embedding"]


def timestep_embedding(t, dim: int) -> Tensor:
    """Equation (6.1): (N,) integer steps -> (N, dim) constant tensor [cos | sin]."""
    if dim % 2:
        raise ValueError(f"timestep_embedding: dim must be even, got {dim}")
    t = t.data if isinstance(t, Tensor) else t
    xp = backend.xp()
    t = xp.asarray(backend.to_device(t) if backend.is_array(t) else t).reshape(-1)
    half = dim // 2
    frequencies = xp.exp(-math.log(10000.0) * xp.arange(half, dtype=xp.float64) / half)
    angles = t.astype(xp.float64)[:, None] * frequencies[None, :]
    embedding = xp.concatenate([xp.cos(angles), xp.sin(angles)], axis=1)
    return Tensor(embedding.astype(backend.default_dtype()))
