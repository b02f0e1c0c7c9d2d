"""Turning operands into tensors, and refusing to mix backends with a clear message."""
from minidiff import backend
from minidiff.tensor import Tensor


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"a {value.backend} Tensor"
    return f"a {backend.backend_name_of(value)} array"


def check_same_backend(op: str, *values) -> None:
    """Raise ``BackendMismatchError`` naming both sides when arrays live on two backends."""
    names = []
    for value in values:
        data = value.data if isinstance(value, Tensor) else value
        names.append(backend.backend_name_of(data) if backend.is_array(data) else None)
    seen = {name for name in names if name is not None}
    if len(seen) > 1:
        parts = ", ".join(f"argument {i + 1} is {_describe(v)}"
                          for i, (v, n) in enumerate(zip(values, names)) if n is not None)
        raise backend.BackendMismatchError(
            f"{op}: operands live on different backends ({parts}); move them to one backend "
            f"first, e.g. tensor.to('{backend.get_backend()}')")


def as_tensors(op: str, *values) -> list:
    """Tensors for ``values``: arrays become constants on their own backend, Python numbers
    become 0-d constants of the dtype of the first tensor (so ``x * 2`` stays float32)."""
    check_same_backend(op, *values)
    like = next((v for v in values if isinstance(v, Tensor)), None)
    out = []
    for value in values:
        if isinstance(value, Tensor):
            out.append(value)
        elif backend.is_array(value):
            out.append(Tensor(value))
        elif like is not None:
            xp = backend.array_module_of(like.data)
            dtype = like.dtype if like.dtype.kind == "f" else None
            out.append(Tensor(xp.asarray(value, dtype=dtype)))
        else:
            out.append(Tensor(value))
    return out
