"""``Tensor``: an array of the active backend that remembers how it was made (lesson 00).

Reverse-mode automatic differentiation in three ideas:

1. **The graph.**  Every operation returns a new ``Tensor`` that keeps its inputs (``parents``)
   and a ``backward`` closure, written right under the forward computation, that turns the
   gradient of the output, dL/d(out), into the gradients of the inputs, dL/d(input) — the
   chain rule, one local derivative at a time.
2. **The order.**  ``loss.backward()`` visits the graph in reverse topological order, so a
   node's gradient is complete (every path to the loss has added its share) before it is
   passed on.  The order is found with an explicit stack, not recursion: a chain of 10,000
   operations is fine.
3. **Broadcasting.**  When ``a + b`` broadcast ``b`` from shape (3,) to (4, 3), each element of
   ``b`` was used four times, so its gradient is the *sum* over the broadcast axis.  The engine
   does this for every operation (``unbroadcast``), so individual ops need not.

Gradients accumulate (``+=`` semantics) into ``.grad`` of leaf tensors that ``requires_grad``.
Intermediate gradients and the closures (which hold the forward buffers) are freed as soon as
backward has used them.

**In-place changes.**  A backward closure reads the forward arrays it saved, so changing a
tensor after an operation used it, and before backward, would make a silently wrong gradient.
As in PyTorch, every tensor carries a version counter, raised by each in-place change the
engine can see: ``x[index] = value``, assigning ``x.data = ...`` and the augmented
assignments ``x.data -= ...`` (which assign).  Each node remembers its inputs' versions, and
backward refuses to use one that changed.  Writing into the raw array, ``x.data[...] = v``,
goes around the engine (NumPy tells nobody); write ``x[...] = v`` instead.
"""
from __future__ import annotations

import contextlib

from minidiff import backend

__all__ = ["Tensor", "no_grad", "is_grad_enabled", "tensor", "as_tensor", "unbroadcast"]

_grad_enabled = [True]


def is_grad_enabled() -> bool:
    """False inside ``with no_grad():``."""
    return _grad_enabled[-1]


@contextlib.contextmanager
def no_grad():
    """Inside this block operations build no graph (sampling, evaluation, EMA updates)."""
    _grad_enabled.append(False)
    try:
        yield
    finally:
        _grad_enabled.pop()


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the adjoint of broadcasting ``shape`` up to ``grad.shape``.

    Leading axes that broadcasting added are summed away; axes where ``shape`` has size 1 are
    summed with ``keepdims``.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


class Tensor:
    """An n-dimensional array with an optional gradient.

    ``data`` is a NumPy or CuPy array; ``grad`` is an array of the same shape (or None);
    ``requires_grad`` marks leaves whose gradient is wanted (parameters, inputs).
    """

    __slots__ = ("_data", "_version", "_versions", "grad", "requires_grad", "_parents",
                 "_backward", "_op", "__weakref__")
    __array_priority__ = 1000  # so that ``ndarray * Tensor`` calls Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        if not backend.is_array(data):
            data = backend.xp().asarray(data, dtype=dtype)
            if dtype is None and data.dtype.kind == "f":
                data = data.astype(backend.default_dtype(), copy=False)
        elif dtype is not None and data.dtype != dtype:
            data = data.astype(dtype)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"requires_grad needs a floating dtype, got {data.dtype}")
        self._data = data
        self._version = 0
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._op = ""

    # ------------------------------------------------------------------ graph building
    @staticmethod
    def _make(data, parents, backward, op: str) -> "Tensor":
        """The result of an operation: record the graph only where a gradient can flow."""
        if not backend.is_array(data):  # 0-d results of reductions come back as scalars
            data = backend.array_module_of(parents[0].data).asarray(data)
        out = Tensor.__new__(Tensor)
        out._data = data
        out._version = 0
        out.grad = None
        out._op = op
        if _grad_enabled[-1] and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
            out._versions = tuple(p._version for p in parents)
            out._backward = backward
        else:
            out.requires_grad = False
            out._parents = ()
            out._backward = None
        return out

    # ------------------------------------------------------------------ backward
    def _topological_order(self) -> list:
        """Nodes that lead to ``self``, each after all of its parents (iterative DFS)."""
        order, visited = [], set()
        stack = [(self, False)]
        while stack:
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
        return order

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Compute d(self)/d(leaf) for every leaf that requires a gradient, accumulating into
        ``leaf.grad``.  ``grad`` defaults to 1 for a scalar; give it for a non-scalar output.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input had requires_grad=True, or it was built under no_grad)")
        xp = backend.array_module_of(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without grad needs a scalar output, "
                                   f"got shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(grad): expected shape {self.shape}, got {grad.shape}")

        order = self._topological_order()
        grads = {id(self): grad}
        while order:
            # pop, not iterate: once a node is done and its children have dropped their links
            # to it, nothing here holds it, so its forward output is freed during backward
            node = order.pop()
            node_grad = grads.pop(id(node), None)
            if node._backward is None:  # a leaf
                if node_grad is not None:  # copy: the array may be shared or a read-only view
                    node.grad = node_grad.copy() if node.grad is None else node.grad + node_grad
                continue
            if node_grad is not None:
                _check_versions(node)
                parent_grads = node._backward(node_grad)
                for parent, parent_grad in zip(node._parents, parent_grads):
                    if parent_grad is None or not parent.requires_grad:
                        continue
                    parent_grad = unbroadcast(parent_grad, parent.data.shape)
                    previous = grads.get(id(parent))
                    grads[id(parent)] = parent_grad if previous is None else \
                        backend.threads.binary(xp.add, previous, parent_grad)
            if not retain_graph:  # free the closure (and the forward buffers it holds)
                node._backward = _freed_backward
                node._parents = ()

    # ------------------------------------------------------------------ data and versions
    @property
    def data(self):
        """The array (NumPy or CuPy) this tensor holds."""
        return self._data

    @data.setter
    def data(self, value):
        self._data = value
        self._version += 1

    def __setitem__(self, index, value) -> None:
        """In-place ``x[index] = value`` (no gradient flows through it); raises the version,
        so a graph that saved ``x`` before refuses to backward through the old values."""
        self._data[index] = _raw(value)
        self._version += 1

    # ------------------------------------------------------------------ conveniences
    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def numpy(self):
        """The data as a NumPy array on the host (a copy when it lives on the GPU)."""
        return backend.to_host(self.data)

    def item(self) -> float:
        return self.data.item()

    def to(self, backend_name: str) -> "Tensor":
        """A copy on another backend ("numpy", "cupy" or "cupy-sim"); a leaf keeps
        ``requires_grad``."""
        return Tensor(backend.to_device(self.data, backend_name), requires_grad=self.requires_grad)

    def zero_grad(self) -> None:
        self.grad = None

    @property
    def backend(self) -> str:
        return backend.backend_name_of(self.data)

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        op = f", op={self._op}" if self._op else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, backend={self.backend}{grad}{op})"

    # ------------------------------------------------------------------ operators
    def __add__(self, other): return _ops.add(self, other)
    def __radd__(self, other): return _ops.add(other, self)
    def __sub__(self, other): return _ops.sub(self, other)
    def __rsub__(self, other): return _ops.sub(other, self)
    def __mul__(self, other): return _ops.mul(self, other)
    def __rmul__(self, other): return _ops.mul(other, self)
    def __truediv__(self, other): return _ops.div(self, other)
    def __rtruediv__(self, other): return _ops.div(other, self)
    def __pow__(self, other): return _ops.power(self, other)
    def __rpow__(self, other): return _ops.power(other, self)
    def __matmul__(self, other): return _ops.matmul(self, other)
    def __rmatmul__(self, other): return _ops.matmul(other, self)
    def __neg__(self): return _ops.neg(self)
    def __getitem__(self, index): return _ops.getitem(self, index)

    # comparisons give plain (non-differentiable) boolean tensors
    def __lt__(self, other): return Tensor(self.data < _raw(other))
    def __le__(self, other): return Tensor(self.data <= _raw(other))
    def __gt__(self, other): return Tensor(self.data > _raw(other))
    def __ge__(self, other): return Tensor(self.data >= _raw(other))

    # ------------------------------------------------------------------ methods
    def sum(self, axis=None, keepdims=False): return _ops.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _ops.mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return _ops.max(self, axis, keepdims)
    def var(self, axis=None, keepdims=False): return _ops.var(self, axis, keepdims)
    def exp(self): return _ops.exp(self)
    def log(self): return _ops.log(self)
    def sqrt(self): return _ops.sqrt(self)
    def abs(self): return _ops.abs(self)
    def tanh(self): return _ops.tanh(self)
    def sigmoid(self): return _ops.sigmoid(self)
    def relu(self): return _ops.relu(self)
    def clip(self, low=None, high=None): return _ops.clip(self, low, high)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops.reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops.transpose(self, axes or None)

    permute = transpose

    @property
    def T(self) -> "Tensor":
        return _ops.transpose(self, None)


def _check_versions(node) -> None:
    """Refuse to backward through ``node`` if an input changed in place since it was used."""
    for position, (parent, seen) in enumerate(zip(node._parents, node._versions)):
        if parent._version != seen:
            raise RuntimeError(
                f"backward(): input {position} of '{node._op or 'an operation'}' "
                f"(shape {parent.shape}) was modified in place after the operation used it "
                f"(version {seen} then, {parent._version} now), so its gradient would be "
                "wrong; change a copy instead, or change it before building the graph")


def _freed_backward(grad):
    """Stands in for a closure that backward has already used and freed."""
    raise RuntimeError("backward() through a graph a second time: its buffers were freed by "
                       "the first backward(); pass retain_graph=True to that first call, or "
                       "rebuild the graph")


def _raw(value):
    return value.data if isinstance(value, Tensor) else value


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """Make a tensor on the active backend (floats get the default dtype unless told)."""
    if backend.is_array(data):
        data = backend.to_device(data) if dtype is None else backend.to_device(data).astype(dtype)
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def as_tensor(value) -> Tensor:
    """``value`` itself if it is a Tensor, else a constant tensor of it."""
    return value if isinstance(value, Tensor) else Tensor(value)


from minidiff import ops as _ops
