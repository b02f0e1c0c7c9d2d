"""Neural-network layers by hand (lesson 05): ``functional`` ops with derived backward passes,
and ``Module``s that hold their parameters.
"""
from minidiff.nn import functional
from minidiff.nn.attention import MultiheadAttention
from minidiff.nn.layers import (Conv2d, ConvTranspose2d, Dropout, Embedding, GroupNorm, Identity,
                                LayerNorm, Linear, SiLU)
from minidiff.nn.module import Module, ModuleList, Parameter, Sequential, StateDictError

__all__ = ["functional", "Module", "Parameter", "Sequential", "ModuleList", "StateDictError",
           "Linear", "Conv2d", "ConvTranspose2d", "GroupNorm", "LayerNorm", "SiLU", "Dropout",
           "Embedding", "Identity", "MultiheadAttention"]
