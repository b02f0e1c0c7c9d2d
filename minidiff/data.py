"""MNIST from the four gzip IDX files committed in ``data/mnist/`` (no download step).

IDX layout (big-endian): int32 magic (2051 for images, 2049 for labels), int32 item count,
for images int32 rows and cols, then the raw uint8 values.  Each ``.gz`` file's sha256 is
checked once per process against the table below, so a truncated or corrupted file is
caught with an error that names it and says how to restore it.

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
from minidiff.validation import MinidiffInputError

__all__ = ["load_mnist", "to_unit_range", "from_unit_range", "MnistDataError", "DEFAULT_ROOT",
           "SHA256", "mnist_root"]

#: ``data/mnist`` of the source checkout this package was imported from (an editable install).
DEFAULT_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "data", "mnist")


def mnist_root() -> str:
    """Where the MNIST files are: ``$MINIDIFF_DATA/mnist`` if that variable is set, else
    ``data/mnist`` under the current folder (the clone you run from), else the checkout
    this package was imported from."""
    if os.environ.get("MINIDIFF_DATA"):
        return os.path.join(os.environ["MINIDIFF_DATA"], "mnist")
    here = os.path.join(os.getcwd(), "data", "mnist")
    return here if os.path.isdir(here) else DEFAULT_ROOT

SHA256 = {
    "train-images-idx3-ubyte.gz":
        "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    "train-labels-idx1-ubyte.gz":
        "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
    "t10k-images-idx3-ubyte.gz":
        "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
    "t10k-labels-idx1-ubyte.gz":
        "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
}
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_RESTORE = ("restore it from the repository (git checkout -- data/mnist/) or copy the original "
            "MNIST .gz file into {folder}")
_verified: set = set()


class MnistDataError(MinidiffInputError, OSError):
    """A missing, truncated or corrupt MNIST file."""


def _verify(path: str) -> None:
    if path in _verified:
        return
    name = os.path.basename(path)
    restore = _RESTORE.format(folder=os.path.dirname(path))
    if not os.path.exists(path):
        raise MnistDataError(f"MNIST file missing: {path}; {restore}")
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    expected = SHA256.get(name)
    if expected is not None and digest.hexdigest() != expected:
        raise MnistDataError(f"MNIST file corrupt or truncated: {path} has sha256 "
                             f"{digest.hexdigest()}, expected {expected}; {restore}")
    _verified.add(path)


def _read_idx(path: str, magic: int):
    """Parse one gzip IDX file into a host uint8 array, checking its header against its size."""
    try:
        with gzip.open(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
        raise MnistDataError(f"MNIST file unreadable: {path} ({error}); "
                             + _RESTORE.format(folder=os.path.dirname(path))) from None
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
    for path in (image_path, label_path):
        _verify(path)
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
    x = backend.to_host(getattr(x, "data", x))
    return ((x.clip(-1.0, 1.0) + 1.0) * 127.5).round().astype(backend.host.uint8)
