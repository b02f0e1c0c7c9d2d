"""Gradient clipping and the learning-rate schedule: linear warm-up, then cosine decay.

clip_grad_norm: with the global norm  n = sqrt(sum over all parameters of |g|^2),
    if n > max_norm:  g <- g * max_norm / (n + 1e-6)     (direction kept, length capped)

Warm-up + cosine, for step t (0-based), warm-up W steps, total T steps:
    t < W:   lr = base (t + 1) / W
    else:    u = (t - W) / max(1, T - W)   (clamped to [0, 1])
             lr = min + (base - min) (1 + cos(pi u)) / 2
"""
from __future__ import annotations

import math

from minidiff import backend

__all__ = ["clip_grad_norm", "warmup_cosine", "WarmupCosine"]


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``;
    returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * scale
    return total


def warmup_cosine(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0,
                  min_lr: float = 0.0) -> float:
    """The learning rate at 0-based ``step`` (formula in the module docstring)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    u = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    u = min(max(u, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * u))


class WarmupCosine:
    """Sets ``optimizer.lr`` for each step; call ``step()`` once per optimizer step."""

    def __init__(self, optimizer, total_steps: int, warmup_steps: int = 0,
                 min_lr: float = 0.0, base_lr: float | None = None):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr if base_lr is None else base_lr
        self.total_steps, self.warmup_steps, self.min_lr = total_steps, warmup_steps, min_lr
        self.last_step = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step, self.base_lr, self.total_steps, self.warmup_steps,
                             self.min_lr)

    def step(self) -> float:
        """Advance one step and set the optimizer's lr; returns the new lr."""
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)
        return self.optimizer.lr

    def state_dict(self) -> dict:
        return {"last_step": backend.host.asarray(self.last_step, dtype=backend.host.int64)}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self.optimizer.lr = self.lr_at(self.last_step)
