"""Optimization (lesson 05): SGD, Adam, AdamW, gradient clipping, warm-up + cosine learning
rate, and an exponential moving average of the parameters for sampling."""
from minidiff.optim.ema import EMA
from minidiff.optim.optimizers import Adam, AdamW, Optimizer, SGD
from minidiff.optim.schedule import WarmupCosine, clip_grad_norm, warmup_cosine

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm", "warmup_cosine",
           "WarmupCosine", "EMA"]
