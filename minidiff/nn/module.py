"""``Module`` and ``Parameter``: the bookkeeping that turns functions into layers (lesson 05).

A module is an object whose attributes are its parameters (``Parameter``, a tensor that
requires a gradient) and its child modules.  Walking those attributes, in the order they were
set, gives every parameter a dotted name ("blocks.0.conv.weight"); that name is the key under
which ``state_dict`` stores it, so saving and loading need no registration code.

``load_state_dict`` is strict: missing keys, unexpected keys and shape mismatches are all
collected and reported in one error, and nothing is changed unless everything matches.
Files are plain ``.npz`` archives written atomically and read with ``allow_pickle=False``.
"""
from __future__ import annotations

from minidiff import backend
from minidiff.errors import MinidiffInputError
from minidiff.tensor import Tensor

__all__ = ["Parameter", "Module", "Sequential", "ModuleList", "StateDictError"]


class StateDictError(MinidiffInputError, KeyError):
    """A state dict does not fit the module: lists missing, unexpected and mis-shaped keys."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _first(items, separator: str, shown: int = 6) -> str:
    """The first ``shown`` items, then how many more: an error stays readable."""
    more = f"{separator}... and {len(items) - shown} more" if len(items) > shown else ""
    return separator.join(items[:shown]) + more


class Parameter(Tensor):
    """A tensor that is a learnable parameter (requires_grad=True)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class: set Parameters and Modules as attributes; define ``forward``."""

    training = True  # class default, so a subclass that skips super().__init__() still works

    def __init__(self):
        object.__setattr__(self, "training", True)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ traversal
    def named_children(self):
        """(name, module) for the direct children, in attribute order."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        return (m for _, m in self.named_children())

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for this module and every descendant (depth first)."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) for every parameter, each shared one once."""
        seen = set()
        for mod_name, module in self.named_modules(prefix):
            for name, value in vars(module).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{mod_name}.{name}" if mod_name else name), value

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "Module":
        """Training mode (dropout active) for this module and every descendant."""
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Dotted parameter name -> a copy of its array (on the parameter's backend)."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into the parameters; keys and shapes must match exactly."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        wrong = sorted(f"{k}: expected {params[k].shape}, got {tuple(state[k].shape)}"
                       for k in set(params) & set(state)
                       if tuple(state[k].shape) != params[k].shape)
        if missing or unexpected or wrong:
            lines = [f"load_state_dict for {type(self).__name__} does not fit:"]
            if missing:
                lines.append(f"  missing keys ({len(missing)}): " + _first(missing, ", "))
            if unexpected:
                lines.append(f"  unexpected keys ({len(unexpected)}): "
                             + _first(unexpected, ", "))
            if wrong:
                lines.append(f"  wrong shapes ({len(wrong)}): " + _first(wrong, "; "))
            raise StateDictError("\n".join(lines))
        for name, p in params.items():
            value = state[name].data if isinstance(state[name], Tensor) else state[name]
            p.data = backend.to_device(value, p.backend).astype(p.dtype, copy=True)

    def save(self, path) -> None:
        """Write the parameters to an .npz file (atomically)."""
        backend.save_npz(path, self.state_dict())

    def load(self, path) -> None:
        """Read parameters written by ``save``; strict like ``load_state_dict``."""
        self.load_state_dict(backend.load_npz(path))

    def to(self, backend_name: str) -> "Module":
        """Move every parameter to another backend, in place."""
        for p in self.parameters():
            p.data = backend.to_device(p.data, backend_name)
            p.grad = None
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self.named_children():
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules whose parameters are found like attributes ("0", "1", ...)."""

    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> "ModuleList":
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        setattr(self, str(len(self)), module)
        return self

    def __len__(self):
        return sum(1 for _ in self.named_children())

    def __getitem__(self, i):
        return list(self.children())[i]

    def __iter__(self):
        return iter(list(self.children()))


class Sequential(ModuleList):
    """Apply the given modules one after the other; children are named "0", "1", ..."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x
