"""Inpainting masks: named masks, random training masks, the latent-grid mask, the masked image."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff import backend
from minidiff.data.masks import (MASK_DRAWS, MaskError, mask_to_grid, masked_image, named_mask,
                                 random_masks)
from minidiff.errors import MinidiffInputError


def host(array):
    return backend.to_host(backend.array_of(array))


@pytest.mark.parametrize("spec, rows, cols", [
    ("bottom", slice(14, 28), slice(0, 28)), ("top", slice(0, 14), slice(0, 28)),
    ("left", slice(0, 28), slice(0, 14)), ("right", slice(0, 28), slice(14, 28)),
    ("box:3,5,10,20", slice(5, 20), slice(3, 10)), ("box:0,0,28,28", slice(0, 28), slice(0, 28)),
    (" Bottom ", slice(14, 28), slice(0, 28))])
def test_named_masks_cover_exactly_their_region(spec, rows, cols):
    mask = host(named_mask(spec))
    assert mask.shape == (28, 28) and mask.dtype == backend.default_dtype()
    expected = np.zeros((28, 28))
    expected[rows, cols] = 1
    assert np.array_equal(mask, expected)


def test_named_half_of_another_size():
    assert host(named_mask("bottom", size=8)).sum(axis=1).tolist() == [0] * 4 + [8] * 4


@pytest.mark.parametrize("spec, words", [
    ("box:0,0,29,5", "inside"), ("box:-1,0,5,5", "inside"), ("box:5,5,5,9", "non-empty"),
    ("box:9,5,4,9", "non-empty"), ("box:1,2,3", "four integers"), ("box:a,b,c,d", "four"),
    ("middle", "bottom, top"), ("", "bottom, top"), ("missing_mask.png", "does not exist")])
def test_bad_mask_specs_name_the_option(spec, words):
    with pytest.raises(MaskError, match=words) as info:
        named_mask(spec)
    assert str(info.value).startswith("--mask:") and isinstance(info.value, MinidiffInputError)


def test_png_masks_fill_the_bright_pixels(tmp_path):
    from PIL import Image
    pixels = np.zeros((28, 28), np.uint8)
    pixels[2:9, 20:26] = 255
    pixels[0, 0] = 127  # dark enough to stay known
    Image.fromarray(pixels).save(tmp_path / "m.png")
    assert np.array_equal(host(named_mask(str(tmp_path / "m.png"))), pixels >= 128)
    Image.fromarray(np.zeros((20, 28), np.uint8) + 255).save(tmp_path / "small.png")
    with pytest.raises(MaskError, match="28x28 PNG.*28x20"):
        named_mask(str(tmp_path / "small.png"))
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "dark.png")
    with pytest.raises(MaskError, match="no pixel to fill"):
        named_mask(str(tmp_path / "dark.png"))
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(MaskError, match="not a readable PNG"):
        named_mask(str(tmp_path / "junk.png"))


def test_random_masks_are_deterministic_given_the_draws():
    backend.manual_seed(3)
    draw = backend.rand(64, MASK_DRAWS)
    first = host(random_masks(64, 28, 0.25, draw))
    assert first.shape == (64, 1, 28, 28) and set(np.unique(first)) <= {0.0, 1.0}
    assert np.array_equal(first, host(random_masks(64, 28, 0.25, backend.to_host(draw))))
    assert not np.array_equal(first, host(random_masks(64, 28, 0.25, backend.rand(64, MASK_DRAWS))))
    with pytest.raises(ValueError, match="draw"):
        random_masks(64, 28, 0.25, backend.rand(64, MASK_DRAWS - 1))


@pytest.mark.parametrize("all_fraction", [0.0, 0.25, 1.0])
def test_random_masks_cover_everything_at_the_requested_fraction(all_fraction):
    n = 4000
    masks = host(random_masks(n, 28, all_fraction, backend.rand(n, MASK_DRAWS)))
    area = masks.reshape(n, -1).mean(axis=1)
    full = np.mean(area == 1.0)
    assert abs(full - all_fraction) < 4 * np.sqrt(all_fraction * (1 - all_fraction) / n) + 1e-9
    assert area.min() > 0  # every mask has something to fill
    partial = masks[area < 1]
    if len(partial):  # boxes, strokes and halves all occur, about a third each
        halves = np.stack([host(named_mask(s)) for s in ("bottom", "top", "left", "right")])
        is_half = (partial == halves[None]).all(axis=(2, 3)).any(axis=1)
        assert abs(is_half.mean() - 1 / 3) < 0.05
        assert len(np.unique(area)) > 100  # boxes and strokes of many sizes


def test_random_mask_kinds_follow_the_documented_draws():
    draw = np.full((3, MASK_DRAWS), 0.5)
    draw[:, 0] = 0.9                      # not "everything"
    draw[0, 1], draw[1, 1], draw[2, 1] = 0.1, 0.5, 0.9  # box, stroke, half
    draw[2, 2] = 0.0                      # the bottom half
    masks = host(random_masks(3, 28, 0.25, draw))
    box = np.zeros((28, 28))
    box[7:21, 7:21] = 1                   # 14 x 14 centred: size (1/4 + 1/4), corner 0.5 * 14
    assert np.array_equal(masks[0, 0], box)
    yy, xx = np.mgrid[0:28, 0:28] + 0.5   # the stroke collapses to a disc of radius 2.5 at 14
    assert np.array_equal(masks[1, 0], np.hypot(yy - 14, xx - 14) <= 2.5)
    assert np.array_equal(masks[2, 0], host(named_mask("bottom")))


@given(st.integers(0, 2**32 - 1), st.sampled_from([(28, 7), (28, 28), (28, 14), (28, 4),
                                                    (12, 3)]), st.floats(0.02, 0.98))
def test_mask_to_grid_claims_no_known_only_cell_and_hides_no_pixel(seed, sizes, density):
    size, grid = sizes
    rng = np.random.default_rng(seed)
    mask = (rng.random((3, 1, size, size)) < density ** 3).astype(np.float32)  # sparse too
    cells = host(mask_to_grid(backend.to_device(mask), grid))
    assert cells.shape == (3, 1, grid, grid)
    f = size // grid
    upsampled = cells.repeat(f, axis=2).repeat(f, axis=3)
    assert np.all(upsampled >= mask)          # no pixel to fill in a known cell
    blocks = mask.reshape(3, 1, grid, f, grid, f).sum(axis=(3, 5))
    assert np.all(blocks[cells == 1] > 0)     # no filled cell made of known pixels only
    if grid == size:
        assert np.array_equal(cells, mask)


def test_mask_to_grid_of_named_masks_and_bad_grids():
    # pixel rows 14..27 to fill; latent row 3 holds pixel rows 12..15, so it is filled too
    assert host(mask_to_grid(named_mask("bottom"), 7))[0, 0].sum(axis=1).tolist() == \
        [0] * 3 + [7] * 4
    box = host(mask_to_grid(named_mask("box:3,5,10,20"), 7))[0, 0]
    expected = np.zeros((7, 7))
    expected[1:5, 0:3] = 1                    # pixels y 5..19 -> cells 1..4, x 3..9 -> 0..2
    assert np.array_equal(box, expected)
    with pytest.raises(ValueError, match="grid"):
        mask_to_grid(named_mask("top"), 5)


def test_masked_image_leaks_nothing_under_the_mask():
    backend.manual_seed(0)
    n = 16
    mask = random_masks(n, 28, 0.25, backend.rand(n, MASK_DRAWS))
    x = backend.rand(n, 1, 28, 28) * 2 - 1
    out = host(masked_image(x, mask))
    m = host(mask) > 0
    x_other = host(x).copy()
    x_other[m] = np.where(np.arange(m.sum()) % 2, np.nan, 0.7)
    assert np.array_equal(host(masked_image(backend.to_device(x_other), mask)), out)
    assert np.all(out[m] == 0) and np.array_equal(out[~m], host(x)[~m])
    one = host(masked_image(x, named_mask("right")))  # one (S, S) mask for a batch
    assert np.all(one[..., 14:] == 0) and np.array_equal(one[..., :14], host(x)[..., :14])
