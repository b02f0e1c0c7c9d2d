"""``cupy-sim``: a CPU stand-in for CuPy that computes with NumPy but keeps CuPy's boundaries.

``minidiff.set_backend("cupy-sim")`` (or ``MINIDIFF_BACKEND=cupy-sim``) makes this module the
array module ``xp()``.  Its arrays (``ndarray`` below) wrap a NumPy array but are a type of
their own, and at every boundary they behave as ``cupy.ndarray`` does (read from CuPy's
``cupy/_core/core.pyx``):

* ``numpy.asarray(a)`` and anything else that asks NumPy for an implicit conversion
  (``__array__``) raises ``TypeError("Implicit conversion to a NumPy array is not allowed...")``;
  the explicit moves are ``a.get()``, ``asnumpy(a)`` and ``minidiff.backend.to_host(a)``;
* a NumPy *function* called on these arrays is dispatched (``__array_function__``) to this
  module's function of the same name, exactly when CuPy has one, and fails otherwise
  ("no implementation found"); a NumPy *ufunc* (``numpy.exp(a)``, ``ndarray + a``) is
  dispatched (``__array_ufunc__``) the same way;
* mixing with a ``numpy.ndarray`` (``a + n``, ``n * a``, ``concatenate([a, n])``,
  ``a[:, 0] = n``) raises ``minidiff.BackendMismatchError`` (a ``TypeError``, as CuPy's
  "Unsupported type <class 'numpy.ndarray'>" is; for the slice assignment CuPy raises a
  ValueError from ``fill``); NumPy *scalars* and Python numbers mix freely, as in CuPy; so do
  what CuPy copies over by itself: ``asarray(n)``, indexing with a NumPy integer or boolean
  array, assigning a 0-d NumPy array, or a NumPy array through an array/mask index;
* ``a.data`` is a pointer to the memory (``MemoryPointer`` below, as ``cupy.ndarray.data`` is a
  ``cupy.cuda.MemoryPointer``), not an array: ``getattr(x, "data", x)``, meant to unwrap a
  Tensor, gives a pointer when ``x`` is a raw device array (``minidiff.backend.array_of`` is the
  safe unwrap; NumPy's ``.data``, a memoryview, happens to convert back, so only the device
  road breaks);
* reductions and integer indexing return 0-d arrays, never NumPy scalars;
  ``float(a)``, ``int(a)``, ``bool(a)``, ``a.item()``, ``a.tolist()``, ``str(a)`` and
  ``format(a, spec)`` synchronise and work as in CuPy (``float`` of an array of more than one
  element fails, as NumPy's does); ``operator.index(a)`` fails (the CuPy source read defines
  no ``__index__``);
* only names in ``CUPY_API`` exist in the module (routines from the tables of CuPy's API
  reference; the ones minidiff uses were each looked up there, and tests/test_cupy_sim.py
  fails when minidiff starts using a name outside the list), so a NumPy routine that CuPy
  lacks fails here as it would on a GPU.

What it cannot catch (it runs NumPy's kernels, not CuPy's): differences in floating-point
results (summation order, cuBLAS/cuDNN algorithms, TF32), kernels CuPy implements differently
(out-of-bounds integer indices wrap in CuPy and raise in NumPy; repeated indices in ``a[i] = v``
keep an undefined value in CuPy), keyword arguments or dtypes a CuPy function does not accept
(only function *names* are checked), asynchronous execution and streams, device memory limits,
and speed.  It is a test of minidiff's discipline at the host/device boundary, not of CuPy.
"""
from __future__ import annotations

import operator
import types

import numpy

from minidiff.errors import BackendMismatchError

__all__ = ["ndarray", "MemoryPointer", "asnumpy", "scatter_add", "CUPY_API", "module"]

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")

#: Names of ``cupy.*`` that this simulator offers, each found in CuPy's API reference
#: (https://docs.cupy.dev/en/stable/reference/routines.html and its pages: creation,
#: manipulation, math, logic, sorting, statistics, indexing, data types, linalg, lib).
CUPY_API = frozenset("""
    abs absolute add all allclose amax amin any arange arccos arcsin arctan arctan2 argmax
    argmin argsort array array_equal asarray ascontiguousarray asnumpy atleast_1d atleast_2d
    broadcast_arrays broadcast_to ceil clip concatenate copy cos cosh cumprod cumsum diag
    diagonal divide dot einsum empty empty_like equal exp expand_dims expm1 eye flip floor
    floor_divide full full_like greater greater_equal isclose isfinite isinf isnan less
    less_equal linspace log log10 log1p log2 logaddexp logical_and logical_not logical_or
    matmul max maximum mean min minimum moveaxis multiply nan_to_num negative nonzero
    not_equal ones ones_like outer pad power prod ravel reciprocal repeat reshape rint
    searchsorted sign sin sinh sort split sqrt square squeeze stack std subtract sum swapaxes
    take tanh
    tensordot tile trace transpose tril triu true_divide unique unravel_index var where
    zeros zeros_like may_share_memory shares_memory
""".split())

#: Sub-modules and their functions (cupy.linalg, cupy.lib.stride_tricks).
CUPY_LINALG = frozenset({"eigh", "eigvalsh", "norm", "inv", "solve", "cholesky", "qr", "svd",
                         "det", "slogdet"})
CUPY_STRIDE_TRICKS = frozenset({"as_strided"})

#: Data types and constants CuPy re-exports from NumPy (``cupy.float32 is numpy.float32``).
_REEXPORTED = ("float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 "
               "bool_ intp complex64 complex128 dtype finfo iinfo newaxis pi e inf nan "
               "issubdtype result_type can_cast promote_types").split()

#: Methods of ``cupy.ndarray`` (https://docs.cupy.dev/en/stable/reference/generated/
#: cupy.ndarray.html); the simulator's arrays have these and no others.
_METHODS = frozenset("""
    all any argmax argmin argsort astype clip conj copy cumprod cumsum diagonal dot fill
    flatten max mean min nonzero prod ravel repeat reshape round sort squeeze std sum
    swapaxes take trace transpose var view
""".split())


# ----------------------------------------------------------------------------- the array type

def _check_no_host(value, where: str):
    """Refuse a numpy.ndarray where CuPy would (it never moves host arrays implicitly)."""
    if isinstance(value, numpy.ndarray):
        raise BackendMismatchError(
            f"{where}: got a numpy array (shape {value.shape}) mixed with cupy-sim arrays; CuPy "
            "does not move host arrays implicitly: use minidiff.backend.to_device(...) first")


def _unwrap(value, where: str):
    """The NumPy array behind ``value`` (recursing into lists, tuples and dicts)."""
    if type(value) is ndarray:
        return value._a
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, where) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, where) for k, v in value.items()}
    _check_no_host(value, where)
    return value


def _wrap(result):
    """NumPy results as simulator arrays; NumPy scalars as 0-d arrays, as CuPy returns them."""
    if isinstance(result, numpy.ndarray):
        return ndarray._of(result)
    if isinstance(result, numpy.generic):
        return ndarray._of(numpy.asarray(result))
    if isinstance(result, tuple):
        return tuple(_wrap(r) for r in result)
    if isinstance(result, list):
        return [_wrap(r) for r in result]
    return result


def _index(key):
    """An index: simulator arrays unwrapped; NumPy arrays and lists allowed (CuPy copies them
    to the device)."""
    if type(key) is ndarray:
        return key._a
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key


def _is_advanced(key) -> bool:
    """Whether an (unwrapped) index uses integer or boolean arrays (or lists)."""
    parts = key if isinstance(key, tuple) else (key,)
    return any(isinstance(p, list) or (isinstance(p, numpy.ndarray) and p.ndim > 0)
               for p in parts)


def _should_defer(other) -> bool:
    """CuPy's ``_should_use_rop``: let ``other`` handle the operator (e.g. a Tensor)."""
    try:
        return other.__array_ufunc__ is None
    except AttributeError:
        return getattr(other, "__array_priority__", 0) > ndarray.__array_priority__


def _binary(ufunc, name):
    def forward(self, other):
        if type(other) is not ndarray and _should_defer(other):
            return NotImplemented
        return _wrap(ufunc(self._a, _unwrap(other, name)))

    def reflected(self, other):
        if _should_defer(other):
            return NotImplemented
        return _wrap(ufunc(_unwrap(other, name), self._a))

    def inplace(self, other):
        ufunc(self._a, _unwrap(other, name), out=self._a)
        return self

    return forward, reflected, inplace


class MemoryPointer:
    """What ``a.data`` is for a CuPy array (``cupy.cuda.MemoryPointer``): the address of its
    device memory, not an array; NumPy makes it a 0-d object array, useless as data."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __int__(self):
        return self.ptr

    def __repr__(self):
        return f"<cupy-sim MemoryPointer 0x{self.ptr:x}>"


class ndarray:
    """An array "on the simulated device": a NumPy array that refuses to leave implicitly."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100   # as cupy.ndarray
    __hash__ = None

    def __init__(self, shape, dtype=float):
        self._a = numpy.empty(shape, dtype=dtype)

    @classmethod
    def _of(cls, array: numpy.ndarray) -> "ndarray":
        out = cls.__new__(cls)
        out._a = array
        return out

    # --- the boundary with NumPy
    def __array__(self, *args, **kwargs):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or ufunc.__name__ not in CUPY_API:
            return NotImplemented
        if "out" in kwargs:
            kwargs["out"] = _unwrap(kwargs["out"], f"numpy.{ufunc.__name__}")
        return _wrap(ufunc(*_unwrap(inputs, f"numpy.{ufunc.__name__}"), **kwargs))

    def __array_function__(self, func, types_, args, kwargs):
        table = {"numpy": module, "numpy.linalg": module.linalg}.get(func.__module__)
        if (table is None or not hasattr(table, func.__name__)
                or not all(issubclass(t, (ndarray, numpy.ndarray)) for t in types_)):
            return NotImplemented      # numpy then raises "no implementation found"
        return getattr(table, func.__name__)(*args, **kwargs)

    def get(self, stream=None, order="C", out=None):
        """A NumPy copy on the host: the explicit device-to-host move (``cupy.ndarray.get``)."""
        if out is not None:
            out[...] = self._a
            return out
        return numpy.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        """Copy a host array of the same shape and dtype in (``cupy.ndarray.set``)."""
        if not isinstance(arr, numpy.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self.dtype or arr.shape != self.shape:
            raise ValueError(f"set: expected {self.shape} {self.dtype}, "
                             f"got {arr.shape} {arr.dtype}")
        self._a[...] = arr

    # --- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray._of(self._a.T))
    base = property(lambda self: None if self._a.base is None else ndarray._of(self._a.base))
    device = property(lambda self: "cupy-sim")
    data = property(lambda self: MemoryPointer(self._a.__array_interface__["data"][0]))

    def __getattr__(self, name):
        if name in _METHODS:
            method = getattr(self._a, name)

            def call(*args, **kwargs):
                return _wrap(method(*_unwrap(args, f"ndarray.{name}"),
                                    **_unwrap(kwargs, f"ndarray.{name}")))
            return call
        raise AttributeError(f"cupy-sim ndarray has no attribute {name!r} "
                             "(cupy.ndarray does not either)")

    # --- conversions that synchronise but are explicit, as in CuPy
    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def tobytes(self, order="C"):
        return self._a.tobytes(order)

    def __float__(self):
        return float(self.get())

    def __int__(self):
        return int(self.get())

    def __complex__(self):
        return complex(self.get())

    def __bool__(self):
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is "
                             "ambiguous. Use a.any() or a.all()")
        return bool(self._a)

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self.get(), spec)

    def __reduce__(self):
        return ndarray._of, (self.get(),)

    def __copy__(self):
        return ndarray._of(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray._of(self._a.copy())

    # --- containers
    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._a)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        key = _index(key)
        if isinstance(value, numpy.ndarray) and (value.ndim == 0 or _is_advanced(key)):
            self._a[key] = value   # CuPy takes a 0-d host array as a scalar, and copies the
            return                 # values of an advanced (array or mask) assignment over
        self._a[key] = _unwrap(value, "ndarray.__setitem__")

    # --- operators
    def __neg__(self):
        return ndarray._of(-self._a)

    def __pos__(self):
        return self

    def __abs__(self):
        return ndarray._of(abs(self._a))

    def __invert__(self):
        return ndarray._of(~self._a)

    def __matmul__(self, other):
        if type(other) is not ndarray and _should_defer(other):
            return NotImplemented
        return _wrap(numpy.matmul(self._a, _unwrap(other, "matmul")))

    def __rmatmul__(self, other):
        if _should_defer(other):
            return NotImplemented
        return _wrap(numpy.matmul(_unwrap(other, "matmul"), self._a))


for _name, _ufunc in [("add", numpy.add), ("sub", numpy.subtract), ("mul", numpy.multiply),
                      ("truediv", numpy.true_divide), ("floordiv", numpy.floor_divide),
                      ("mod", numpy.remainder), ("pow", numpy.power),
                      ("and", numpy.bitwise_and), ("or", numpy.bitwise_or),
                      ("xor", numpy.bitwise_xor)]:
    _f, _r, _i = _binary(_ufunc, f"operator {_name}")
    setattr(ndarray, f"__{_name}__", _f)
    setattr(ndarray, f"__r{_name}__", _r)
    setattr(ndarray, f"__i{_name}__", _i)
for _name, _op in [("lt", operator.lt), ("le", operator.le), ("eq", operator.eq),
                   ("ne", operator.ne), ("gt", operator.gt), ("ge", operator.ge)]:
    setattr(ndarray, f"__{_name}__", _binary(_op, f"operator {_name}")[0])


# ----------------------------------------------------------------------------- the module

def asnumpy(a, stream=None, order="C", out=None):
    """``cupy.asnumpy``: a host copy of a simulator array (other values pass to numpy)."""
    if type(a) is ndarray:
        return a.get(order=order, out=out)
    return numpy.asarray(a, order=order)


def _asarray(a, dtype=None, order=None, copy=None):
    """``cupy.asarray``/``array``: host values (lists, NumPy arrays) are copied to the device."""
    if type(a) is ndarray:
        if copy:
            return ndarray._of(numpy.array(a._a, dtype=dtype, order=order or "K", copy=True))
        if (dtype is None or numpy.dtype(dtype) == a.dtype) and order is None:
            return a
        return ndarray._of(numpy.asarray(a._a, dtype=dtype, order=order))
    if isinstance(a, (list, tuple)):
        a = _unwrap(a, "asarray")
    return ndarray._of(numpy.array(a, dtype=dtype, order=order or "K", copy=True))


def _array(a, dtype=None, copy=True, order="K", **kwargs):
    return _asarray(a, dtype=dtype, order=order, copy=copy)


def _wrapped(function, where):
    def call(*args, **kwargs):
        return _wrap(function(*_unwrap(args, where), **_unwrap(kwargs, where)))
    call.__name__ = call.__qualname__ = function.__name__
    call.__doc__ = f"cupy-sim: numpy's {where} on the simulated device"
    return call


def _elementwise(ufunc, where):
    """CuPy's ufuncs take arrays and scalars only (a list raises TypeError, as in CuPy)."""
    def call(*args, **kwargs):
        for arg in args:
            if isinstance(arg, (list, tuple)):
                raise TypeError(f"{where}: Unsupported type {type(arg)} (CuPy's ufuncs take "
                                "arrays and scalars only)")
        return _wrap(ufunc(*_unwrap(args, where), **_unwrap(kwargs, where)))
    call.__name__ = call.__qualname__ = ufunc.__name__
    return call


def _unravel_index(indices, dims, order="C"):
    """``cupy.unravel_index`` takes a device array only: given a Python int it fails (its
    ``can_cast`` check refuses Python ints under NumPy 2, then ``(indices < 0).any()``)."""
    if type(indices) is not ndarray:
        raise TypeError(f"cupy.unravel_index: indices must be a cupy array, got "
                        f"{type(indices).__name__} (CuPy fails on Python ints here)")
    return _wrap(numpy.unravel_index(indices._a, dims, order=order))


def scatter_add(a, slices, value) -> None:
    """``cupyx.scatter_add``: ``a[slices] += value`` with repeated indices accumulated."""
    if type(a) is not ndarray:
        raise TypeError(f"cupyx.scatter_add: expected a cupy array, got {type(a).__name__}")
    slices = _index(slices)
    if not (isinstance(value, numpy.ndarray) and (value.ndim == 0 or _is_advanced(slices))):
        value = _unwrap(value, "cupyx.scatter_add")   # else CuPy copies the host values over
    numpy.add.at(a._a, slices, value)


def _build() -> types.ModuleType:
    sim = types.ModuleType("cupy_sim", "CuPy's API on NumPy's kernels (minidiff's cupy-sim)")
    for name in _REEXPORTED:
        setattr(sim, name, getattr(numpy, name))
    for name in sorted(CUPY_API):
        target = getattr(numpy, name, None)
        if isinstance(target, numpy.ufunc):
            setattr(sim, name, _elementwise(target, f"cupy.{name}"))
        elif target is not None:
            setattr(sim, name, _wrapped(target, f"cupy.{name}"))
    sim.ndarray = ndarray
    sim.unravel_index = _unravel_index
    sim.asarray = _asarray
    sim.array = _array
    sim.asnumpy = asnumpy
    sim.get_array_module = lambda *args: sim
    sim.linalg = types.ModuleType("cupy_sim.linalg")
    for name in CUPY_LINALG:
        setattr(sim.linalg, name, _wrapped(getattr(numpy.linalg, name), f"cupy.linalg.{name}"))
    stride_tricks = types.ModuleType("cupy_sim.lib.stride_tricks")
    stride_tricks.as_strided = _wrapped(numpy.lib.stride_tricks.as_strided,
                                        "cupy.lib.stride_tricks.as_strided")
    sim.lib = types.ModuleType("cupy_sim.lib")
    sim.lib.stride_tricks = stride_tricks
    return sim


#: the simulated ``cupy`` module that ``minidiff.backend.xp()`` returns under cupy-sim
module = _build()
