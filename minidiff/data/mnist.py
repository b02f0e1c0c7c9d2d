"""MNIST from the four gzip IDX files committed in ``data/mnist/`` (no download step).

IDX layout (big-endian): int32 magic (2051 for images, 2049 for labels), int32 item count,
for images int32 rows and cols, then the raw uint8 values.  The sha256 of each file's
*decompressed* content is checked against the table below (once per process), so a truncated
or corrupted file is caught with an error that names it and says how to restore it, while
the same data compressed again (another gzip level or tool) is still accepted.  The folder
is found by ``minidiff.data.paths`` ($MINIDIFF_DATA, the working folder, the source tree, the
installation).

Images are uint8 in [0, 255]; diffusion works on floats in [-1, 1] (``to_unit_range`` and back
with ``from_unit_range``), the range on which the 256-level discretized decoder of lesson 04
is defined.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct

from minidiff import backend
from minidiff.data import paths
from minidiff.errors import MinidiffInputError

__all__ = ["load_mnist", "to_unit_range", "from_unit_range", "MnistDataError", "DEFAULT_ROOT",
           "SHA256", "mnist_root"]

#: ``data/mnist`` of the source checkout this package was imported from (an editable install).
DEFAULT_ROOT = os.path.join(paths.SOURCE_DATA, "mnist")


def mnist_root() -> str:
    """The ``mnist`` folder ``minidiff.data.paths.find`` gives (the first of $MINIDIFF_DATA, the
    working folder, the source tree, the installation); the first candidate when none has it,
    so that the error names a place."""
    try:
        return paths.find("mnist")
    except paths.DataNotFoundError:
        return os.path.join(paths.data_roots()[0][1], "mnist")


#: sha256 of each file's decompressed content (the IDX bytes)
SHA256 = {
    "train-images-idx3-ubyte.gz":
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz":
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz":
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz":
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_RESTORE = ("restore it from the repository (git checkout -- data/mnist/), copy the original "
            "MNIST .gz file into {folder}, or set MINIDIFF_DATA to a folder whose mnist/ "
            "holds the four files")
_verified: set = set()


class MnistDataError(MinidiffInputError, OSError):
    """A missing, truncated or corrupt MNIST file."""


def _verify(path: str, raw: bytes) -> None:
    """Compare the sha256 of the decompressed bytes with the table (once per file)."""
    if path in _verified:
        return
    expected = SHA256.get(os.path.basename(path))
    found = hashlib.sha256(raw).hexdigest()
    if expected is not None and found != expected:
        raise MnistDataError(f"MNIST file corrupt: {path} decompresses to content with sha256 "
                             f"{found}, expected {expected}; "
                             + _RESTORE.format(folder=os.path.dirname(path)))
    _verified.add(path)


def _read_idx(path: str, magic: int):
    """Parse one gzip IDX file into a host uint8 array, checking its content's sha256 and its
    header against its size."""
    if not os.path.exists(path):
        raise MnistDataError(f"MNIST file missing: {path} (looked in: "
                             f"{paths.searched('mnist')}); "
                             + _RESTORE.format(folder=os.path.dirname(path)))
    try:
        with gzip.open(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
        raise MnistDataError(f"MNIST file corrupt or truncated: {path} ({error}); "
                             + _RESTORE.format(folder=os.path.dirname(path))) from None
    _verify(path, raw)
    dims = 3 if magic == 2051 else 1
    header = 4 * (1 + dims)
    if len(raw) < header:
        raise MnistDataError(f"MNIST file {path}: only {len(raw)} bytes, shorter than its header")
    found, *shape = struct.unpack(f">{1 + dims}i", raw[:header])
    if found != magic:
        raise MnistDataError(f"MNIST file {path}: magic number {found}, expected {magic}")
    count = 1
    for size in shape:
        count *= size
    if len(raw) - header != count:
        raise MnistDataError(f"MNIST file {path}: header promises {count} values of shape "
                             f"{tuple(shape)}, found {len(raw) - header}")
    return backend.host.frombuffer(raw, dtype=backend.host.uint8, offset=header).reshape(shape)


def load_mnist(split: str = "train", root: str | None = None):
    """``(images, labels)`` of the ``split`` ("train": 60,000, "test": 10,000) as host arrays:
    images uint8 of shape (N, 1, 28, 28), labels int64 of shape (N,)."""
    if split not in _FILES:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    root = root or mnist_root()
    image_path, label_path = (os.path.join(root, name) for name in _FILES[split])
    images = _read_idx(image_path, 2051)
    labels = _read_idx(label_path, 2049).astype(backend.host.int64)
    if len(images) != len(labels):
        raise MnistDataError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images.reshape(-1, 1, *images.shape[1:]), labels


def to_unit_range(images):
    """uint8 [0, 255] -> float in [-1, 1]: x = 2 (u / 255) - 1, on the active backend."""
    data = backend.to_device(images).astype(backend.default_dtype())
    return data * (2.0 / 255.0) - 1.0


def from_unit_range(x):
    """float in [-1, 1] -> uint8 [0, 255] (clipped, rounded) as a host array."""
    x = backend.to_host(backend.array_of(x))
    return ((x.clip(-1.0, 1.0) + 1.0) * 127.5).round().astype(backend.host.uint8)
