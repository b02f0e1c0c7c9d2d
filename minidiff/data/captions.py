"""Captions for MNIST digits, made from the label and from two attributes measured on the image.

Stroke thickness and slant are measured on the pixels (no labelled attributes exist), binned
into thirds of the training set (the middle third gets no word) and put into a caption with one
of several templates ("a thick seven", "7", "a thin slanted four", "two").  A word-level
``Tokenizer`` turns captions into int64 token rows for the text encoder tau_theta (index 0 =
padding).  Everything here works on host NumPy arrays: captions are made on the host; a device
array given is brought to the host first.

Thickness (a morphological estimate, chosen over "ink area / skeleton length" because it needs
no skeletonisation, whose thinning algorithms are long and fragile on 28x28 grey images, and
it is a few vectorised min filters).  With I = image / 255 in [0, 1] and E^k the k-fold 3x3
grey erosion (minimum filter), the ink-weighted mean erosion depth is

    D = sum_{k >= 0} sum_pixels E^k(I) / sum_pixels I        (for a binary image: the mean,
                                                             over ink pixels, of the chessboard
                                                             distance to the background)
    thickness = 4 D - 2.

Across a long straight bar of even width w the depths are 1, 2, ..., w/2, w/2, ..., 2, 1, whose
mean is w/4 + 1/2, so the formula gives exactly w (odd widths: within 0.34 of w; widths 1 and 2
both give 2).  The image border counts as continuing the edge pixels (edge padding), so a stroke
that leaves the frame has no artificial end; MNIST digits never touch the border anyway.

Slant: with the ink I as weights, centred second moments mu11 = sum I (x - x_bar)(y - y_bar)
and mu02 = sum I (y - y_bar)^2 (x right, y down), the horizontal shear x -> x + s (y - y_bar)
of an upright shape (mu11 = 0) gives mu11 = s mu02, so

    slant = |mu11 / mu02|        (the absolute shear; 0 = upright).
"""
from __future__ import annotations

from dataclasses import dataclass

from minidiff import backend
from minidiff.errors import MinidiffInputError

__all__ = ["CaptionError", "CaptionStats", "DIGIT_WORDS", "NUMERALS", "VOCABULARY",
           "N_CHOICES", "Tokenizer", "attribute_words", "contradiction", "make_captions",
           "measure_slant", "measure_thickness", "tertile_edges"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUMERALS = tuple(str(d) for d in range(10))
THICKNESS_WORDS = ("thin", "thick")
SLANT_WORDS = ("upright", "slanted")
FILLERS = ("a", "an", "digit", "written", "and", "the")
VOCABULARY = ("<pad>",) + DIGIT_WORDS + NUMERALS + THICKNESS_WORDS + SLANT_WORDS + FILLERS

#: ``make_captions`` reads ``choice % N_CHOICES``: draw ``choice`` from [0, N_CHOICES)
N_CHOICES = 32

_CHUNK = 8192  # images measured at once (bounds the float64 temporaries at ~50 MB)


class CaptionError(MinidiffInputError):
    """A caption (a prompt) the tokenizer cannot encode."""


def _ink(images):
    """(N, 28, 28) float64 in [0, 1] from uint8 (N, 28, 28) or (N, 1, 28, 28), on the host."""
    images = backend.to_host(backend.array_of(images))
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"images: expected (N, 28, 28) or (N, 1, 28, 28), got shape "
                         f"{images.shape}")
    return images.astype(backend.host.float64) / 255.0


def _erode(ink):
    """3x3 grey erosion (minimum over the 8 neighbours and the pixel), edge-padded."""
    np = backend.host
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = np.minimum(np.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return np.minimum(np.minimum(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])


def _thickness_chunk(ink):
    np = backend.host
    area = ink.sum(axis=(1, 2))
    depth_sum = area.copy()
    eroded = ink
    for _ in range(max(ink.shape[1:]) // 2 + 1):  # erosion empties any image by then
        eroded = _erode(eroded)
        mass = eroded.sum(axis=(1, 2))
        if not mass.any():
            break
        depth_sum += mass
    mean_depth = np.divide(depth_sum, area, out=np.zeros_like(area), where=area > 0)
    return np.where(area > 0, 4.0 * mean_depth - 2.0, 0.0)


def measure_thickness(images):
    """Stroke thickness in pixels, (N,) float64: ``4 D - 2`` with D the ink-weighted mean 3x3
    erosion depth (module docstring; exact for long bars of even width).  0 for a blank image."""
    ink = _ink(images)
    np = backend.host
    if len(ink) == 0:
        return np.zeros(0)
    return np.concatenate([_thickness_chunk(ink[i:i + _CHUNK])
                           for i in range(0, len(ink), _CHUNK)])


def measure_slant(images):
    """Absolute shear ``|mu11 / mu02|`` of the ink distribution, (N,) float64 (module
    docstring); 0 for a blank image or one whose ink lies on one row."""
    np = backend.host
    ink = _ink(images)
    mass = ink.sum(axis=(1, 2))
    safe_mass = np.where(mass > 0, mass, 1.0)
    h, w = ink.shape[1:]
    y = np.arange(h, dtype=np.float64)[None, :, None]
    x = np.arange(w, dtype=np.float64)[None, None, :]
    y_bar = (ink * y).sum(axis=(1, 2)) / safe_mass
    x_bar = (ink * x).sum(axis=(1, 2)) / safe_mass
    dy = y - y_bar[:, None, None]
    dx = x - x_bar[:, None, None]
    mu11 = (ink * dx * dy).sum(axis=(1, 2))
    mu02 = (ink * dy * dy).sum(axis=(1, 2))
    ok = mu02 > 1e-12
    return np.where(ok, np.abs(mu11) / np.where(ok, mu02, 1.0), 0.0)


def tertile_edges(values):
    """``(low, high)``: the 1/3 and 2/3 quantiles of ``values`` (floats)."""
    values = backend.to_host(backend.array_of(values)).astype(backend.host.float64).ravel()
    if values.size == 0:
        raise ValueError("values: expected at least one value, got none")
    low, high = backend.host.quantile(values, [1.0 / 3.0, 2.0 / 3.0])
    return float(low), float(high)


def attribute_words(thickness, slant, edges):
    """Two host string arrays of shape (N,): "thin" where thickness < low, "thick" where
    thickness > high, "" in between; "upright" / "" / "slanted" likewise for the slant.
    ``edges`` is a ``CaptionStats`` or a pair ``(thickness_edges, slant_edges)``."""
    np = backend.host
    if isinstance(edges, CaptionStats):
        edges = (edges.thickness_edges, edges.slant_edges)
    (t_low, t_high), (s_low, s_high) = edges

    def words(values, low, high, below, above):
        values = backend.to_host(backend.array_of(values))
        return np.where(values < low, below, np.where(values > high, above, ""))

    return (words(thickness, t_low, t_high, "thin", "thick"),
            words(slant, s_low, s_high, "upright", "slanted"))


def _article(word: str) -> str:
    return "an" if word in ("eight", "8", "upright") else "a"  # the sound, not the letter


def _caption(label: int, thick: str, slant: str, choice: int) -> str:
    """One caption; the bits of ``choice`` pick: numeral or digit word (bit 0), keep the
    thickness word (bit 1), keep the slant word (bit 2), and the filler template (bits 3-4)."""
    name = NUMERALS[label] if choice & 1 else DIGIT_WORDS[label]
    attrs = [word for word, keep in ((thick, choice & 2), (slant, choice & 4)) if word and keep]
    template = (choice >> 3) & 3
    if template == 0:                                     # "thick seven", "7"
        words = attrs + [name]
    elif template == 1:                                   # "a thin slanted four"
        words = attrs + [name]
        words = [_article(words[0])] + words
    elif template == 2:                                   # "a thick digit 7"
        words = attrs + ["digit", name]
        words = [_article(words[0])] + words
    elif attrs:                                           # "a seven written thick and slanted"
        words = [_article(name), name, "written", " and ".join(attrs)]
    else:                                                 # "the digit seven"
        words = ["the", "digit", name]
    return " ".join(words)


def make_captions(labels, thickness_words, slant_words, choice) -> list:
    """One caption per image from its label (0..9), its attribute words ("" for none) and an
    integer ``choice`` (only ``choice % N_CHOICES`` matters; the caller draws it from
    minidiff's generator, so a resumed run makes the same captions).  A word appears only if
    the image has it; the templates vary digit word / numeral, each attribute kept or not, and
    the fillers (see ``_caption``).  Strings are Python objects: this is one list comprehension
    over the batch, the measurements behind it are vectorised."""
    labels = backend.to_host(backend.array_of(labels)).astype(int).ravel()
    choice = backend.to_host(backend.array_of(choice)).astype(int).ravel() % N_CHOICES
    thickness_words = [str(w) for w in thickness_words]
    slant_words = [str(w) for w in slant_words]
    n = len(labels)
    if not (len(thickness_words) == len(slant_words) == len(choice) == n):
        raise ValueError(f"make_captions: expected one label, thickness word, slant word and "
                         f"choice per image, got {n}, {len(thickness_words)}, "
                         f"{len(slant_words)}, {len(choice)}")
    if n and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"labels: expected digits 0..9, got {labels.min()}..{labels.max()}")
    return [_caption(*item) for item in zip(labels.tolist(), thickness_words, slant_words,
                                            choice.tolist())]


_DIGIT_OF = {**{word: d for d, word in enumerate(DIGIT_WORDS)},
             **{numeral: d for d, numeral in enumerate(NUMERALS)}}


def contradiction(words) -> str:
    """What in the caption ``words`` cannot all be true of one digit ("names two digits:
    seven, three", "is both thin and thick", "is both upright and slanted"), or "".  The
    training captions never contradict themselves, so a model asked to would draw one of the
    two at best."""
    digits = sorted({_DIGIT_OF[w] for w in words if w in _DIGIT_OF})
    if len(digits) > 1:
        return (f"names {len(digits)} digits: "
                + ", ".join(DIGIT_WORDS[d] for d in digits))
    for group in (THICKNESS_WORDS, SLANT_WORDS):
        used = [w for w in group if w in words]
        if len(used) > 1:
            return f"is both {' and '.join(used)}"
    return ""


class Tokenizer:
    """Words <-> token ids over ``VOCABULARY`` (index 0 = padding), ``max_tokens`` per row."""

    def __init__(self, max_tokens: int = 8):
        if int(max_tokens) < 1:
            raise ValueError(f"max_tokens: expected an integer >= 1, got {max_tokens!r}")
        self.max_tokens = int(max_tokens)
        self.vocabulary = VOCABULARY
        self.index = {word: i for i, word in enumerate(VOCABULARY) if i > 0}

    def __len__(self) -> int:
        return len(self.vocabulary)

    def encode(self, captions):
        """int64 host array (N, max_tokens): the words of each caption (lower-cased, split on
        white space) as indices, padded with 0; "" is all padding.  CaptionError for an unknown
        word (named, with the vocabulary), a caption longer than max_tokens words, or one that
        contradicts itself (``contradiction``: two digits, thin and thick, upright and
        slanted)."""
        if isinstance(captions, str):
            captions = [captions]
        tokens = backend.host.zeros((len(captions), self.max_tokens), dtype=backend.host.int64)
        for row, caption in enumerate(captions):
            words = str(caption).lower().split()
            if len(words) > self.max_tokens:
                raise CaptionError(
                    f"--prompt {caption!r}: expected at most max_tokens = {self.max_tokens} "
                    f"words, got {len(words)}")
            for col, word in enumerate(words):
                if word not in self.index:
                    raise CaptionError(
                        f"--prompt {caption!r}: unknown word {word!r}; the vocabulary is: "
                        f"{' '.join(VOCABULARY[1:])}")
                tokens[row, col] = self.index[word]
            clash = contradiction(words)
            if clash:
                raise CaptionError(f"--prompt {caption!r}: {clash}; a caption describes one "
                                   "digit, with at most one thickness and one slant word")
        return tokens

    def decode(self, tokens) -> list:
        """The captions of a (N, L) array of token ids (padding dropped)."""
        tokens = backend.to_host(backend.array_of(tokens))
        if tokens.ndim == 1:
            tokens = tokens[None]
        return [" ".join(self.vocabulary[i] for i in row if i != 0) for row in tokens.tolist()]


@dataclass(frozen=True)
class CaptionStats:
    """The attribute tertile edges measured on the training set: ``(low, high)`` pairs."""

    thickness_edges: tuple
    slant_edges: tuple

    @classmethod
    def from_images(cls, images) -> "CaptionStats":
        """Measure thickness and slant of ``images`` (the training set) and take tertiles."""
        return cls(tertile_edges(measure_thickness(images)), tertile_edges(measure_slant(images)))

    def to_arrays(self) -> dict:
        """``{"captions.thickness_edges", "captions.slant_edges"}``: float64 (2,) host arrays
        for a checkpoint."""
        np = backend.host
        return {"captions.thickness_edges": np.asarray(self.thickness_edges, dtype=np.float64),
                "captions.slant_edges": np.asarray(self.slant_edges, dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays) -> "CaptionStats":
        """The inverse of ``to_arrays`` (extra keys in ``arrays`` are ignored)."""
        def pair(key):
            if key not in arrays:
                raise KeyError(f"caption statistics: the checkpoint has no {key!r}")
            values = backend.to_host(backend.array_of(arrays[key])).ravel()
            if values.shape != (2,):
                raise ValueError(f"{key}: expected 2 values (low, high), got {values.shape}")
            return float(values[0]), float(values[1])
        return cls(pair("captions.thickness_edges"), pair("captions.slant_edges"))

    def words(self, images):
        """The (thickness, slant) word arrays of ``images``."""
        return attribute_words(measure_thickness(images), measure_slant(images), self)

    def captions(self, images, labels, choice) -> list:
        """Captions of ``images`` with their ``labels``, templates picked by ``choice``."""
        thick, slant = self.words(images)
        return make_captions(labels, thick, slant, choice)
