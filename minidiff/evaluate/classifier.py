"""A small MNIST classifier written with minidiff itself: the feature extractor of minidiff's
FID and the judge of sample confidence / class histograms.

Architecture (28x28 input in [-1, 1]):
conv3x3(1->32, pad 1)+relu -> conv3x3 stride 2 (32->64)+relu [14x14] ->
conv3x3 stride 2 (64->64)+relu [7x7] -> flatten -> linear(3136->128)+relu  (the 128-d
*penultimate features* used for FID) -> linear(128->10) (logits).

Trained by ``minidiff eval train-classifier`` (see data/checkpoints/classifier.md).
"""
from __future__ import annotations

import hashlib
import os

from minidiff import backend
from minidiff.data.paths import SOURCE_DATA, find
from minidiff.errors import MinidiffInputError
from minidiff.nn import Conv2d, Linear, Module
from minidiff.nn.module import StateDictError
from minidiff.ops import relu
from minidiff.tensor import Tensor, no_grad

#: where ``minidiff eval train-classifier`` writes the classifier: the source tree's copy
DEFAULT_PATH = os.path.join(SOURCE_DATA, "checkpoints", "classifier.npz")

#: the shipped classifier, under data/ (found by ``minidiff.data.paths.find``)
SHIPPED = os.path.join("checkpoints", "classifier.npz")
FEATURE_DIM = 128


class MnistClassifier(Module):
    def __init__(self, width: int = 32, hidden: int = FEATURE_DIM):
        super().__init__()
        self.conv1 = Conv2d(1, width, 3, stride=1, padding=1)
        self.conv2 = Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.conv3 = Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.fc1 = Linear(2 * width * 7 * 7, hidden)
        self.fc2 = Linear(hidden, 10)

    def features(self, x):
        """The penultimate activations, (N, 128), after the relu."""
        h = relu(self.conv1(x))
        h = relu(self.conv2(h))
        h = relu(self.conv3(h))
        h = h.reshape(h.shape[0], -1)
        return relu(self.fc1(h))

    def forward(self, x):
        return self.fc2(self.features(x))


def file_checksum(path) -> str:
    """sha256 (first 16 hex digits) of a file's bytes: the key of cached test statistics."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def classifier_path(path=None) -> str:
    """``path``, or where the shipped classifier is (``data/checkpoints/classifier.npz``, found
    from any folder by ``paths.find``)."""
    if path is not None:
        return path
    return find(SHIPPED)


def load_classifier(path=None, name: str = "classifier") -> MnistClassifier:
    """The shipped classifier (or the one at ``path``), in eval mode, on the active backend.

    A file that is missing, not an .npz, or holds other weights is a ``MinidiffInputError``
    that starts with ``name`` and says what the file holds instead."""
    path = classifier_path(path)
    if not os.path.exists(path):
        raise MinidiffInputError(f"{name}: classifier not found: {path}",
                                 "train it with: minidiff eval train-classifier")
    model = MnistClassifier()
    try:
        arrays = backend.load_npz(path)
        if any(not backend.host.isfinite(v).all() for v in arrays.values() if v.dtype.kind == "f"):
            raise MinidiffInputError(f"{path} has NaN or Inf weights")
        model.load_state_dict(arrays)
    except StateDictError:
        found = ", ".join(sorted(arrays)[:3]) + (", ..." if len(arrays) > 3 else "")
        raise MinidiffInputError(
            f"{name}: {path} is not a minidiff MNIST classifier: it holds {len(arrays)} arrays "
            f"({found}) where the classifier has {len(model.state_dict())} "
            f"({', '.join(list(model.state_dict())[:3])}, ...)") from None
    except MinidiffInputError as error:
        raise MinidiffInputError(f"{name}: {error}") from None
    return model.eval()


def _batches(x, batch: int):
    for start in range(0, len(x), batch):
        yield x[start:start + batch]


def classify(model, x, batch: int = 500):
    """(features (N, 128), probabilities (N, 10)) of images ``x`` in [-1, 1], shape (N,1,28,28),
    as arrays on the active backend."""
    xp = backend.xp()
    feats, probs = [], []
    with no_grad():
        for chunk in _batches(x, batch):
            data = chunk.data if isinstance(chunk, Tensor) else chunk
            h = model.features(Tensor(backend.to_device(data).astype(backend.default_dtype())))
            logits = model.fc2(h).data
            shifted = logits - logits.max(axis=1, keepdims=True)
            p = xp.exp(shifted)
            feats.append(h.data)
            probs.append(p / p.sum(axis=1, keepdims=True))
    return xp.concatenate(feats), xp.concatenate(probs)


def accuracy(model, x, labels, batch: int = 500) -> float:
    """Fraction of ``x`` classified as ``labels``."""
    _, probs = classify(model, x, batch)
    predictions = backend.to_host(probs.argmax(axis=1))
    return float((predictions == backend.to_host(labels)).mean())
