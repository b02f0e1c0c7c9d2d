"""SGD with momentum, Adam and AdamW, written as their update equations (lesson 05).

With gradient g_t of parameter p at step t (t = 1, 2, ...) and learning rate lr:

SGD (momentum mu, PyTorch's convention; weight decay wd added to the gradient):
    g <- g + wd p;   b <- mu b + g  (b_1 = g_1);   p <- p - lr b

Adam (Kingma & Ba 2015; weight decay as an L2 term in the gradient, like torch.optim.Adam):
    g <- g + wd p
    m <- b1 m + (1 - b1) g;      v <- b2 v + (1 - b2) g^2
    m^ = m / (1 - b1^t);         v^ = v / (1 - b2^t)
    p <- p - lr m^ / (sqrt(v^) + eps)

AdamW (Loshchilov & Hutter 2019): the decay is *decoupled* from the gradient statistics,
    p <- p (1 - lr wd), then the Adam step with the raw g.

Every optimizer keeps its state in arrays, so ``state_dict()`` is a flat dict of arrays
("step", "lr", "exp_avg.3", ...) that goes into an .npz checkpoint, and
``load_state_dict`` restores it exactly (keys and shapes checked).
"""
from __future__ import annotations

from minidiff import backend

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer:
    """Holds the parameters, the learning rate (settable by a schedule) and per-parameter
    state buffers named in ``_buffers``."""

    _buffers: tuple = ()

    def __init__(self, params, lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if lr < 0:
            raise ValueError(f"{type(self).__name__}: learning rate must be >= 0, got {lr}")
        self.lr = float(lr)
        self.step_count = 0
        self.state = {name: [None] * len(self.params) for name in self._buffers}
        self._scratch_blocks = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        self.step_count += 1
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._update(i, p, p.grad.astype(p.dtype, copy=False))

    def _update(self, i, p, g):
        raise NotImplementedError

    def _buffer(self, name, i, p):
        if self.state[name][i] is None:
            self.state[name][i] = backend.array_module_of(p.data).zeros_like(p.data)
        return self.state[name][i]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """{"step", "lr", "<buffer>.<i>"}: arrays only (buffers not yet created are absent)."""
        host = backend.host
        out = {"step": host.asarray(self.step_count, dtype=host.int64),
               "lr": host.asarray(self.lr, dtype=host.float64)}
        for name, buffers in self.state.items():
            for i, buf in enumerate(buffers):
                if buf is not None:
                    out[f"{name}.{i}"] = buf.copy()
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; unknown keys or wrong shapes raise a KeyError/ValueError."""
        known = {"step", "lr"}
        problems = []
        for key in state:
            if key in known:
                continue
            name, _, index = key.rpartition(".")
            if name not in self.state or not index.isdigit() or int(index) >= len(self.params):
                problems.append(f"unexpected key {key}")
            elif tuple(state[key].shape) != self.params[int(index)].shape:
                problems.append(f"{key}: expected {self.params[int(index)].shape}, "
                                f"got {tuple(state[key].shape)}")
        problems += [f"missing key {k}" for k in sorted(known - set(state))]
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        self.step_count = int(state["step"])
        self.lr = float(state["lr"])
        self.state = {name: [None] * len(self.params) for name in self._buffers}
        for key, value in state.items():
            if key not in known:
                name, _, index = key.rpartition(".")
                p = self.params[int(index)]
                self.state[name][int(index)] = backend.to_device(value, p.backend).astype(
                    p.dtype, copy=True)


class SGD(Optimizer):
    """p <- p - lr b,  b <- mu b + (g + wd p)."""

    _buffers = ("momentum",)

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum, self.weight_decay = momentum, weight_decay

    def _update(self, i, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            if self.state["momentum"][i] is None:
                self.state["momentum"][i] = g.copy()
            else:
                buf = self.state["momentum"][i]
                buf *= self.momentum
                buf += g
            g = self.state["momentum"][i]
        p.data -= self.lr * g


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` is an L2 term added to g."""

    _buffers = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay

    def _update(self, i, p, g):
        """The update with no temporaries beyond one scratch array (``_scratch``): every
        step runs in place on m, v, p and that array, using
        m^ / (sqrt(v^) + eps) = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)."""
        xp = backend.array_module_of(p.data)
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p.data *= 1.0 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p.data
        m = self._buffer("exp_avg", i, p)
        v = self._buffer("exp_avg_sq", i, p)
        tmp = self._scratch(p)
        m *= b1                                   # m <- b1 m + (1 - b1) g
        xp.multiply(g, 1.0 - b1, out=tmp)
        m += tmp
        v *= b2                                   # v <- b2 v + (1 - b2) g^2
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        t = self.step_count
        xp.sqrt(v, out=tmp)                       # sqrt(v^) + eps
        tmp *= 1.0 / (1.0 - b2 ** t) ** 0.5
        tmp += self.eps
        xp.divide(m, tmp, out=tmp)                # then times lr / (1 - b1^t)
        tmp *= self.lr / (1.0 - b1 ** t)
        p.data -= tmp

    def _scratch(self, p):
        """An uninitialised array shaped like ``p``, cut from one block per dtype and backend
        that is as large as the largest parameter: shared by every parameter's update."""
        xp = backend.array_module_of(p.data)
        key = (p.dtype, p.backend)
        block = self._scratch_blocks.get(key)
        if block is None or block.size < p.size:
            block = xp.empty(max(q.size for q in self.params), dtype=p.dtype)
            self._scratch_blocks[key] = block
        return block[:p.size].reshape(p.shape)


class AdamW(Adam):
    """Adam with decoupled weight decay: p <- p (1 - lr wd) before the Adam step."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
