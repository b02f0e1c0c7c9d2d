"""Captions: the measurements against independent computations, tertiles, templates, tokenizer."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff import backend
from minidiff.data.captions import (DIGIT_WORDS, N_CHOICES, NUMERALS, VOCABULARY, CaptionError,
                                    CaptionStats, Tokenizer, attribute_words, make_captions,
                                    measure_slant, measure_thickness, tertile_edges)
from minidiff.data.mnist import load_mnist
from minidiff.errors import MinidiffInputError


def _bar(width, height=28, size=28, horizontal=False):
    """A uint8 bar ``width`` pixels wide and ``height`` tall, centred."""
    image = np.zeros((size, size), dtype=np.uint8)
    left = (size - width) // 2
    top = (size - height) // 2
    image[top:top + height, left:left + width] = 255
    return image.T.copy() if horizontal else image


def _sheared_bar(shear, width=3.0, height=20, size=28, supersample=8):
    """A vertical bar sheared by x -> x + shear (y - centre), anti-aliased by supersampling."""
    fine = (np.arange(size * supersample) + 0.5) / supersample
    y, x = fine[:, None], fine[None, :]
    centre = size / 2.0
    inside = ((np.abs(x - centre - shear * (y - centre)) < width / 2)
              & (np.abs(y - centre) < height / 2))
    cover = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return np.round(255 * cover).astype(np.uint8)


@pytest.fixture(scope="module")
def test_digits():
    images, labels = load_mnist("test")
    return images[:2000], labels[:2000]


def test_thickness_of_full_height_bars_is_their_width():
    widths = np.arange(1, 11)
    bars = np.stack([_bar(w) for w in widths] + [_bar(w, horizontal=True) for w in widths])
    measured = measure_thickness(bars)
    for m in (measured[:10], measured[10:]):
        # exact for even widths (mean depth w/4 + 1/2), within 0.34 for odd widths >= 3
        assert np.allclose(m[1::2], widths[1::2])
        assert np.all(np.abs(m[2::2] - widths[2::2]) < 0.34)
        assert np.all(np.diff(m[1:]) > 0)


def test_thickness_of_short_bars_grows_with_width_and_stays_close():
    measured = measure_thickness(np.stack([_bar(w, height=20) for w in range(2, 9)]))
    assert np.all(np.diff(measured) > 0)
    # the ends erode too, so a bar 20 long reads low by about w^2 / (2 * 20) at most
    widths = np.arange(2, 9)
    assert np.all(np.abs(widths - measured) <= widths ** 2 / 40 + 0.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thickness_is_four_times_the_mean_chessboard_distance_minus_two(seed):
    # independent: brute-force chessboard distance from every ink pixel to the background
    rng = np.random.default_rng(seed)
    image = np.zeros((28, 28), dtype=np.uint8)
    for _ in range(4):
        y0, x0 = rng.integers(2, 18, size=2)
        h, w = rng.integers(2, 9, size=2)
        image[y0:y0 + h, x0:x0 + w] = 255
    ys, xs = np.nonzero(image)
    by, bx = np.nonzero(image == 0)
    distance = np.maximum(np.abs(ys[:, None] - by[None]), np.abs(xs[:, None] - bx[None]))
    expected = 4.0 * distance.min(axis=1).mean() - 2.0
    assert measure_thickness(image[None])[0] == pytest.approx(expected)


def test_dilated_digits_measure_thicker(test_digits):
    images = test_digits[0][:500, 0]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    dilated = np.max([padded[:, dy:dy + 28, dx:dx + 28] for dy in range(3) for dx in range(3)],
                     axis=0)
    before, after = measure_thickness(images), measure_thickness(dilated)
    assert np.all(after > before)
    assert 1.0 < np.mean(after - before) < 3.0


def test_thickness_accepts_both_shapes_and_a_blank_image(test_digits):
    images = test_digits[0][:8]
    assert np.array_equal(measure_thickness(images), measure_thickness(images[:, 0]))
    assert measure_thickness(np.zeros((2, 28, 28), np.uint8)).tolist() == [0.0, 0.0]
    assert measure_thickness(backend.to_device(images)).shape == (8,)


@pytest.mark.parametrize("shear", [0.0, 0.1, -0.2, 0.35, -0.5, 0.6])
def test_slant_of_a_sheared_bar_is_the_shear(shear):
    assert measure_slant(_sheared_bar(shear)[None])[0] == pytest.approx(abs(shear), abs=0.02)


def test_slant_matches_weighted_covariance_on_digits(test_digits):
    images = test_digits[0][:50, 0].astype(np.float64)
    yy, xx = np.mgrid[0:28, 0:28]
    expected = []
    for image in images:
        cov = np.cov(xx.ravel(), yy.ravel(), aweights=image.ravel())
        expected.append(abs(cov[0, 1] / cov[1, 1]))
    assert np.allclose(measure_slant(test_digits[0][:50]), expected)
    assert measure_slant(np.zeros((1, 28, 28), np.uint8))[0] == 0.0


def test_tertile_edges_split_a_set_into_thirds(test_digits):
    images = test_digits[0]
    stats = CaptionStats.from_images(images)
    thick, slant = stats.words(images)
    for words, names in ((thick, ("thin", "", "thick")), (slant, ("upright", "", "slanted"))):
        fractions = [np.mean(words == name) for name in names]
        assert np.allclose(fractions, 1 / 3, atol=0.002), fractions
    low, high = tertile_edges(np.arange(300.0))
    assert np.sum(np.arange(300.0) < low) == 100 and np.sum(np.arange(300.0) > high) == 100


def test_caption_stats_round_trip_through_a_checkpoint(tmp_path, test_digits):
    stats = CaptionStats.from_images(test_digits[0][:300])
    arrays = stats.to_arrays()
    assert set(arrays) == {"captions.thickness_edges", "captions.slant_edges"}
    assert all(a.dtype == np.float64 and a.shape == (2,) for a in arrays.values())
    backend.save_npz(tmp_path / "c.npz", arrays)
    assert CaptionStats.from_arrays(backend.load_npz(tmp_path / "c.npz")) == stats


def test_attribute_words_use_the_edges():
    thick, slant = attribute_words(np.array([1.0, 2.0, 3.0]), np.array([0.3, 0.0, 0.1]),
                                   ((1.5, 2.5), (0.05, 0.2)))
    assert thick.tolist() == ["thin", "", "thick"]
    assert slant.tolist() == ["slanted", "upright", ""]


def test_every_template_is_in_the_vocabulary_and_round_trips():
    tokenizer = Tokenizer(8)
    labels, thick, slant, choice = [], [], [], []
    for label in range(10):
        for t in ("thin", "", "thick"):
            for s in ("upright", "", "slanted"):
                for c in range(N_CHOICES):
                    labels.append(label), thick.append(t), slant.append(s), choice.append(c)
    captions = make_captions(np.array(labels), thick, slant, np.array(choice))
    assert all(0 < len(c.split()) <= 8 for c in captions)
    assert set(" ".join(captions).split()) <= set(VOCABULARY[1:])
    assert tokenizer.decode(tokenizer.encode(captions)) == captions
    for caption, label, t, s in zip(captions, labels, thick, slant):
        words = caption.split()
        assert DIGIT_WORDS[label] in words or NUMERALS[label] in words
        assert {"thin", "thick", "upright", "slanted"} & set(words) <= {t, s}
    for example in ("a thick seven", "7", "a thin slanted four", "two", "an eight"):
        assert example in captions


def test_make_captions_is_deterministic_given_choice():
    labels = np.arange(10)
    thick, slant = ["thick"] * 10, ["slanted"] * 10
    a = make_captions(labels, thick, slant, np.arange(10) * 3)
    assert a == make_captions(labels, thick, slant, np.arange(10) * 3)
    assert a != make_captions(labels, thick, slant, np.arange(10) * 3 + 1)
    with pytest.raises(ValueError, match="labels"):
        make_captions(np.array([10]), [""], [""], np.array([0]))


def test_tokenizer_pads_and_lowercases():
    tokens = Tokenizer(5).encode(["A  Thick SEVEN", ""])
    assert tokens.dtype == np.int64 and tokens.shape == (2, 5)
    assert tokens[0, 3:].tolist() == [0, 0] and tokens[1].tolist() == [0] * 5
    assert [VOCABULARY[i] for i in tokens[0, :3]] == ["a", "thick", "seven"]
    assert Tokenizer(5).decode(tokens) == ["a thick seven", ""]


def test_tokenizer_errors_name_the_word_and_the_limit():
    with pytest.raises(CaptionError, match="'purple'") as info:
        Tokenizer(8).encode(["a purple seven"])
    assert isinstance(info.value, MinidiffInputError)
    assert "seven" in str(info.value) and "slanted" in str(info.value)
    with pytest.raises(CaptionError, match="max_tokens = 3"):
        Tokenizer(3).encode(["a thin slanted four"])
    with pytest.raises(CaptionError, match="<pad>"):
        Tokenizer(3).encode(["<pad>"])


@given(st.lists(st.sampled_from(VOCABULARY[1:]), max_size=8))
def test_encode_decode_round_trip(words):
    """Every caption that does not contradict itself round-trips; every one that does is
    refused (two digits, by word or numeral; thin and thick; upright and slanted)."""
    caption = " ".join(words)
    digits = {w if w in NUMERALS else str(DIGIT_WORDS.index(w)) for w in words
              if w in DIGIT_WORDS or w in NUMERALS}
    clash = (len(digits) > 1 or {"thin", "thick"} <= set(words)
             or {"upright", "slanted"} <= set(words))
    if clash:
        with pytest.raises(CaptionError, match="--prompt .*(names|is both)"):
            Tokenizer(8).encode([caption])
    else:
        assert Tokenizer(8).decode(Tokenizer(8).encode([caption])) == [caption]


@pytest.mark.parametrize("prompt, says", [
    ("seven three", "names 2 digits: three, seven"),
    ("7 3", "names 2 digits: three, seven"),
    ("a thick thin seven", "is both thin and thick"),
    ("an upright slanted 3", "is both upright and slanted"),
])
def test_contradictory_prompts_are_refused(prompt, says):
    with pytest.raises(CaptionError) as info:
        Tokenizer(8).encode([prompt])
    assert says in str(info.value) and repr(prompt) in str(info.value)


def test_same_digit_twice_is_not_a_contradiction():
    assert Tokenizer(8).encode(["seven 7"]).shape == (1, 8)


def test_attribute_figure_sorts_and_saves(tmp_path, test_digits):
    from minidiff.data.caption_figures import save_attribute_figure
    strips = save_attribute_figure(test_digits[0][:200], tmp_path / "a.png", n=8)
    for name, measure in (("thickness", measure_thickness), ("slant", measure_slant)):
        values, picks = strips[name]
        assert picks.shape == (8, 1, 28, 28) and np.all(np.diff(values) >= 0)
        assert np.allclose(measure(picks), values)
        assert values[0] == measure(test_digits[0][:200]).min()
    assert (tmp_path / "a.png").stat().st_size > 0
