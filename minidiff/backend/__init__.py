"""The one seam between minidiff and its array libraries (NumPy on the CPU, CuPy on the GPU).

Every other module asks this one for the active array module with ``xp()`` and never imports
numpy or cupy itself, so the same code runs on both (``tests/test_backend.py`` checks this).

What lives here:

* choosing the backend: ``set_backend("numpy" | "cupy" | "cupy-sim")``, or the environment
  variable ``MINIDIFF_BACKEND`` read at import; asking for CuPy where it cannot run gives a
  one-line ``BackendUnavailableError`` that says why (not installed, or no usable GPU).
  ``cupy-sim`` (``backend/cupysim.py``) computes with NumPy but keeps CuPy's rules at the
  host/device boundary, so the GPU road (``is_device_backend``) can be tested on a CPU;
* the default floating dtype (float32; float64 for gradient checks);
* moving arrays between host and device: ``to_host``, ``to_device``, ``array_module_of``;
  ``array_of`` unwraps "a Tensor or an array";
* randomness: one seeded generator, ``manual_seed(n)``.  It draws on the host (NumPy's PCG64)
  and the draws are moved to the device, so a seed gives the *same* numbers on either backend
  and the generator's state can be saved in a checkpoint and restored exactly;
* host-side file I/O of arrays (``save_npz`` written atomically, ``load_npz`` never unpickling).

``import minidiff`` never imports CuPy unless it is asked for.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import tempfile
import zipfile

from minidiff.backend import threads  # noqa: E402, F401  (loads NumPy: see threads.py)

import numpy  # noqa: E402
from minidiff.errors import BackendMismatchError, MinidiffInputError


def _keep_freed_memory() -> None:
    """Let glibc's malloc hand freed arrays out again instead of returning them to the
    operating system.

    By default glibc maps every block above a threshold (adapted at run time, at most 32 MiB)
    straight from the kernel and unmaps it on free, so a fresh array of a few MB costs a page
    fault and a zeroed page per 4 KiB on its first touch.  A U-Net training step allocates
    and frees about 80 MB of activations and gradients that way: 20,000 page faults, 0.1-0.4 s
    of system time.  With the mapping threshold at its maximum and the heap kept (trimmed only
    above 1 GiB of free space) the same step took no page faults, and 6-10% less wall time in
    alternating runs (minima 1.35-1.47 against 1.46-1.55 s), with the same peak memory.
    Linux with glibc only; settings a user gave glibc (MALLOC_*_THRESHOLD_) win.
    """
    if not hasattr(os, "confstr") or any(
            key in os.environ for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return
        libc = ctypes.CDLL("libc.so.6")
    except (ValueError, OSError):   # no such confstr name, or no glibc to load
        return
    m_trim_threshold, m_mmap_threshold = -1, -3   # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 * 2 ** 20)
    libc.mallopt(m_trim_threshold, 2 ** 30)


_keep_freed_memory()

__all__ = [
    "BackendUnavailableError", "BackendMismatchError", "set_backend", "get_backend", "xp",
    "array_module_of", "array_of", "backend_name_of", "is_array", "is_device_backend",
    "to_host", "to_device", "set_default_dtype", "default_dtype", "manual_seed",
    "get_rng_state", "set_rng_state", "randn", "rand", "randint", "permutation", "scatter_add",
    "atomic_file", "save_npz", "load_npz", "host", "synchronize",
]

#: NumPy itself, for host-side work that is not math (image and file I/O).
host = numpy

BACKENDS = ("numpy", "cupy", "cupy-sim")
#: the backends whose arrays live on a (real or simulated) device and take CuPy's code paths
DEVICE_BACKENDS = ("cupy", "cupy-sim")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (CuPy missing, or no GPU)."""


_cupy = None  # the cupy module once it has been imported successfully
_cupysim = None  # minidiff.backend.cupysim once cupy-sim has been asked for
_state = {"name": "numpy", "dtype": numpy.float32}


def _import_cupy():
    """Import CuPy and check a GPU answers; raise a one-line error that says why not."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy  # noqa: PLC0415  (imported only when asked for)
    except ImportError as error:
        raise BackendUnavailableError(
            "backend 'cupy' is unavailable: CuPy is not installed "
            f"({error}); install it with: pip install 'minidiff[gpu]'") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDA raises its own error types
        raise BackendUnavailableError(
            f"backend 'cupy' is unavailable: CuPy is installed but no CUDA GPU answers "
            f"({type(error).__name__}: {error})") from None
    if count < 1:
        raise BackendUnavailableError("backend 'cupy' is unavailable: no CUDA GPU found")
    _cupy = cupy
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports and a GPU answers (used by tests to skip cleanly)."""
    try:
        _import_cupy()
    except BackendUnavailableError:
        return False
    return True


def _import_cupysim():
    """The CuPy simulator (imported on first use: it is no part of a plain ``import minidiff``)."""
    global _cupysim
    if _cupysim is None:
        from minidiff.backend import cupysim as backend_cupysim  # noqa: PLC0415
        _cupysim = backend_cupysim
    return _cupysim


def set_backend(name: str) -> None:
    """Make ``name`` ("numpy", "cupy" or "cupy-sim") the array library of every new tensor."""
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    if name == "cupy":
        _import_cupy()
    elif name == "cupy-sim":
        _import_cupysim()
    _state["name"] = name


def get_backend() -> str:
    """The name of the active backend, "numpy", "cupy" or "cupy-sim"."""
    return _state["name"]


def is_device_backend(name: str | None = None) -> bool:
    """True when ``name`` (default: the active backend) keeps arrays on a device: "cupy", or
    "cupy-sim", which must take every CuPy code path so that a CPU run tests them."""
    return (name or _state["name"]) in DEVICE_BACKENDS


def xp():
    """The active array module: ``numpy``, ``cupy`` or the cupy-sim module."""
    return _module(_state["name"]) if _state["name"] != "numpy" else numpy


def _module(name: str):
    if name == "cupy":
        return _import_cupy()
    if name == "cupy-sim":
        return _import_cupysim().module
    return numpy


def is_array(value) -> bool:
    """True for a NumPy, (already imported) CuPy or cupy-sim ndarray."""
    if isinstance(value, numpy.ndarray):
        return True
    if _cupysim is not None and type(value) is _cupysim.ndarray:
        return True
    return _cupy is not None and isinstance(value, _cupy.ndarray)


def array_of(value):
    """The array behind ``value``: a Tensor's ``.data``, an array itself.  Not
    ``getattr(value, "data", value)``: an array has a ``.data`` of its own (a memoryview in
    NumPy, a device ``MemoryPointer`` in CuPy), which is not the array."""
    return value if is_array(value) else getattr(value, "data", value)


def backend_name_of(array) -> str:
    """"numpy", "cupy" or "cupy-sim": where ``array`` lives.  TypeError for anything else."""
    if isinstance(array, numpy.ndarray):
        return "numpy"
    if _cupysim is not None and type(array) is _cupysim.ndarray:
        return "cupy-sim"
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return "cupy"
    raise TypeError(f"expected a numpy or cupy array, got {type(array).__name__}")


def array_module_of(array):
    """The module (numpy or cupy) that owns ``array``."""
    return _module(backend_name_of(array))


def to_host(array):
    """A NumPy copy (or view, when already on the host) of ``array``."""
    if isinstance(array, numpy.ndarray):
        return array
    if _cupysim is not None and type(array) is _cupysim.ndarray:
        return array.get()
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return numpy.asarray(array)


def to_device(array, backend: str | None = None):
    """``array`` moved to ``backend`` (default: the active one); no copy if already there."""
    name = backend or get_backend()
    if name == "numpy":
        return to_host(array)
    return _module(name).asarray(array)


def synchronize() -> None:
    """Wait until the device has finished its queued work (CuPy launches kernels
    asynchronously, so a timing must end with this); nothing to wait for on NumPy/cupy-sim."""
    if _state["name"] == "cupy":
        _cupy.cuda.Device().synchronize()


# ----------------------------------------------------------------------------- dtypes

_DTYPES = {"float32": numpy.float32, "float64": numpy.float64}


def set_default_dtype(dtype) -> None:
    """Make float32 (the default) or float64 the dtype of new floating tensors."""
    key = numpy.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key not in _DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    _state["dtype"] = _DTYPES[key]


def default_dtype():
    """The dtype (numpy.float32 or numpy.float64) of new floating tensors."""
    return _state["dtype"]


# ----------------------------------------------------------------------------- randomness

_rng = {"generator": numpy.random.default_rng(0)}


def manual_seed(seed: int) -> None:
    """Seed minidiff's generator: the same seed gives the same draws on NumPy and on CuPy."""
    _rng["generator"] = numpy.random.default_rng(int(seed))


def get_rng_state() -> str:
    """The generator's state as a JSON string (stored in checkpoints, restored on resume)."""
    return json.dumps(_rng["generator"].bit_generator.state)


def set_rng_state(state: str) -> None:
    """Restore a state returned by ``get_rng_state``."""
    generator = numpy.random.default_rng()
    generator.bit_generator.state = json.loads(state)
    _rng["generator"] = generator


def _float_dtype(dtype):
    return numpy.dtype(dtype if dtype is not None else default_dtype())


def randn(*shape, dtype=None):
    """Standard normal draws of ``shape`` on the active backend."""
    draws = _rng["generator"].standard_normal(shape, dtype=numpy.float64)
    return to_device(draws.astype(_float_dtype(dtype), copy=False))


def rand(*shape, dtype=None):
    """Uniform draws in [0, 1) of ``shape`` on the active backend."""
    draws = _rng["generator"].random(shape, dtype=numpy.float64)
    return to_device(draws.astype(_float_dtype(dtype), copy=False))


def randint(low: int, high: int, size):
    """Integers drawn uniformly from [low, high), as int64, on the active backend."""
    return to_device(_rng["generator"].integers(low, high, size=size, dtype=numpy.int64))


def permutation(n: int):
    """A random permutation of range(n) as a host int64 array (for shuffling data)."""
    return _rng["generator"].permutation(n)


@contextlib.contextmanager
def rng_offset(delta: int):
    """Inside the block, draws come from ``delta`` draws further along the generator's stream
    (PCG64 jumps there at once); afterwards it is exactly where the same draws without the
    offset would have left it.  Data-parallel ranks use it with offsets 2^64 apart for their
    dropout masks: independent masks, yet the same generator state on every rank."""
    bits = _rng["generator"].bit_generator
    bits.advance(delta)
    try:
        yield
    finally:
        bits.advance(-delta)


# ----------------------------------------------------------------------------- scatter-add

def scatter_add(target, index, values) -> None:
    """``target[index] += values`` with repeated indices accumulated (``numpy.add.at``, or
    ``cupyx.scatter_add`` on the device)."""
    if isinstance(target, numpy.ndarray):
        numpy.add.at(target, index, values)
    elif _cupysim is not None and type(target) is _cupysim.ndarray:
        _cupysim.scatter_add(target, index, values)   # the simulator's cupyx.scatter_add
    else:
        import cupyx  # noqa: PLC0415  (only ever reached with CuPy arrays)
        cupyx.scatter_add(target, index, values)


# ----------------------------------------------------------------------------- file I/O

@contextlib.contextmanager
def atomic_file(path):
    """``with atomic_file(path) as temporary: write(temporary)``: the file is written under a
    temporary name in the same folder (same extension, so writers that go by it still work)
    and renamed over ``path`` only when the block ends without error.  An interruption
    (Ctrl-C, a crash, a full disk) leaves the old file or the new one, never half of one,
    and no temporary file behind."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-",
                                         suffix=os.path.splitext(path)[1])
    os.close(handle)
    try:
        yield temporary
        with open(temporary, "rb") as stream:      # on the disk before the rename
            os.fsync(stream.fileno())
        umask = os.umask(0)      # mkstemp makes the file 0600; give it the user's usual mode
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def save_npz(path, arrays: dict) -> None:
    """Write ``arrays`` (name -> array, any backend) to ``path`` atomically (``atomic_file``)."""
    with atomic_file(path) as temporary:
        with open(temporary, "wb") as stream:
            numpy.savez(stream, **{key: to_host(value) for key, value in arrays.items()})


def load_npz(path) -> dict:
    """Read an ``.npz`` file into a dict of host arrays; object arrays are refused.

    Errors are ``MinidiffInputError`` (a ValueError) naming the file: not an .npz file at all,
    truncated, or holding pickled objects (never loaded: unpickling runs code)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise MinidiffInputError(f"{path} is a folder, not an .npz file")
    if not zipfile.is_zipfile(path):
        raise MinidiffInputError(f"{path} is not an .npz file (an .npz is a zip archive of "
                                 "arrays; this file is not a zip archive)")
    try:
        # open the file here so it is closed even when numpy.load fails on a truncated file
        with open(path, "rb") as stream, numpy.load(stream, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as error:
        if "pickle" in str(error):
            raise MinidiffInputError(f"{path}: holds pickled Python objects, not plain arrays; "
                                     "minidiff reads only arrays of numbers and never "
                                     "unpickles (unpickling can run any code)") from None
        raise MinidiffInputError(f"{path}: not a plain .npz of arrays ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise MinidiffInputError(f"{path}: unreadable or truncated .npz file ({error})") from None


#: why the backend named by $MINIDIFF_BACKEND could not be used (None when it could)
environment_error = None


def _init_from_environment() -> None:
    """Use the backend ``$MINIDIFF_BACKEND`` names.  One that is unknown or cannot run here
    does not break ``import minidiff``: one line on stderr says so, minidiff stays on NumPy,
    and ``environment_error`` keeps the reason (the ``minidiff`` command then stops)."""
    global environment_error
    name = os.environ.get("MINIDIFF_BACKEND")
    if not name:
        return
    try:
        set_backend(name)
    except (ValueError, BackendUnavailableError) as error:
        environment_error = f"MINIDIFF_BACKEND={name}: {' '.join(str(error).split())}"
        print(f"minidiff: {environment_error} (unset it, or set numpy or cupy)",
              file=sys.stderr)


_init_from_environment()
