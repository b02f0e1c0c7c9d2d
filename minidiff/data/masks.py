"""Inpainting masks: named masks for the CLI, random masks for training, and the U-Net's inputs.

Convention: 1 = the region to fill, 0 = known; x to the right, y down, pixel coordinates.  The
functions run on the active backend (``backend.xp()``): they are used at every training step.
Stable Diffusion's inpainting model is fed ``[z_t, mask on the latent grid, E(masked image)]``;
``mask_to_grid`` and ``masked_image`` build the last two so that no pixel to fill reaches them.
"""
from __future__ import annotations

import os

from minidiff import backend
from minidiff.errors import MinidiffInputError

__all__ = ["MASK_DRAWS", "MASK_KINDS", "MaskError", "mask_to_grid", "masked_image",
           "named_mask", "random_masks"]

MASK_KINDS = ("bottom", "top", "left", "right", "box:x0,y0,x1,y1", "path.png")

#: ``random_masks`` reads ``draw[:, :MASK_DRAWS]``: uniform numbers in [0, 1)
MASK_DRAWS = 9

_ACCEPTED = "bottom, top, left, right, box:x0,y0,x1,y1 (x1, y1 exclusive) or a .png file"


class MaskError(MinidiffInputError):
    """A ``--mask`` that cannot be used."""


def _coordinates(size: int):
    """Pixel-centre coordinates y (size, 1) and x (1, size) on the active backend."""
    xp = backend.xp()
    axis = xp.arange(size, dtype=backend.default_dtype()) + 0.5
    return axis[:, None], axis[None, :]


def _half(which, size: int):
    """(n, size, size) halves for ``which`` in 0..3 = bottom, top, left, right (n,) ints."""
    y, x = _coordinates(size)
    half = size / 2.0
    which = which[:, None, None]
    return (((which == 0) & (y >= half)) | ((which == 1) & (y < half))
            | ((which == 2) & (x < half)) | ((which == 3) & (x >= half)))


def _png_mask(spec: str, size: int):
    from PIL import Image  # noqa: PLC0415
    if not os.path.isfile(spec):
        raise MaskError(f"--mask: expected {_ACCEPTED}; the file {spec!r} does not exist")
    try:
        with Image.open(spec) as picture:
            pixels = backend.host.asarray(picture.convert("L"))
    except OSError as error:
        raise MaskError(f"--mask: {spec!r} is not a readable PNG ({error})") from None
    if pixels.shape != (size, size):
        raise MaskError(f"--mask: expected a {size}x{size} PNG, got {spec!r} of "
                        f"{pixels.shape[1]}x{pixels.shape[0]} pixels")
    mask = pixels >= 128
    if not mask.any():
        raise MaskError(f"--mask: {spec!r} marks no pixel to fill (bright pixels, >= 128 in "
                        f"grey levels, are filled; all are dark)")
    return backend.to_device(mask.astype(backend.default_dtype()))


def _box_mask(spec: str, size: int):
    text = spec[len("box:"):]
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise MaskError(f"--mask: expected box:x0,y0,x1,y1 with four integers, got "
                        f"{spec!r}") from None
    if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
        raise MaskError(f"--mask: expected a non-empty box inside the {size}x{size} image, "
                        f"0 <= x0 < x1 <= {size} and 0 <= y0 < y1 <= {size}, got {spec!r}")
    mask = backend.xp().zeros((size, size), dtype=backend.default_dtype())
    mask[y0:y1, x0:x1] = 1.0
    return mask


def named_mask(spec: str, size: int = 28):
    """(size, size) float mask (1 = fill) for ``spec``: "bottom" (rows y >= size/2), "top",
    "left" (columns x < size/2), "right", "box:x0,y0,x1,y1" (x0 <= x < x1, y0 <= y < y1) or a
    path ending in ".png": a size x size image whose bright pixels (grey level >= 128 after
    conversion to greyscale) are to be filled, the dark ones known.  MaskError naming --mask."""
    spec = str(spec).strip()
    halves = ("bottom", "top", "left", "right")
    if spec.lower() in halves:
        which = backend.xp().asarray([halves.index(spec.lower())])
        return _half(which, size)[0].astype(backend.default_dtype())
    if spec.lower().startswith("box:"):
        return _box_mask(spec, size)
    if spec.lower().endswith(".png"):
        return _png_mask(spec, size)
    raise MaskError(f"--mask: expected {_ACCEPTED}, got {spec!r}")


def _segment_distance(y, x, y0, x0, y1, x1):
    """Distance from each pixel centre to the segment (y0, x0)-(y1, x1); (n, size, size)."""
    xp = backend.xp()
    dy, dx = y1 - y0, x1 - x0
    length2 = xp.maximum(dy * dy + dx * dx, 1e-6)
    s = ((y - y0) * dy + (x - x0) * dx) / length2
    s = xp.clip(s, 0.0, 1.0)
    return xp.sqrt((y - y0 - s * dy) ** 2 + (x - x0 - s * dx) ** 2)


def random_masks(n: int, size: int, all_fraction: float, draw):
    """(n, 1, size, size) float training masks from ``draw``, an (n, MASK_DRAWS) array of
    uniform numbers in [0, 1) the caller takes from ``backend.rand(n, MASK_DRAWS)`` (so a
    resumed run draws the same masks).  Columns u0..u8 of each row:

    * u0 < all_fraction: the whole image is to be filled (generation from nothing);
    * else the kind floor(3 u1): 0 a box, 1 a thick stroke, 2 a half;
    * box: width and height size (1/4 + u2 / 2), size (1/4 + u3 / 2), left/top corner
      u4 (size - width), u5 (size - height);
    * stroke: the polyline (u2, u3) -> (u4, u5) -> (u6, u7) (as y, x fractions of [size/8,
      7 size/8]), every pixel within a radius of size (1.5 + 2 u8) / 28 of it;
    * half: floor(4 u2) = bottom, top, left, right.

    Every kind marks at least one pixel; the kinds are computed for the whole batch at once."""
    xp = backend.xp()
    dtype = backend.default_dtype()
    draw = backend.to_device(backend.array_of(draw)).astype(dtype)
    if draw.ndim != 2 or draw.shape[0] != n or draw.shape[1] < MASK_DRAWS:
        raise ValueError(f"draw: expected shape ({n}, {MASK_DRAWS}), got {draw.shape}")
    u = [draw[:, i][:, None, None] for i in range(MASK_DRAWS)]
    y, x = _coordinates(size)

    width, height = size * (0.25 + 0.5 * u[2]), size * (0.25 + 0.5 * u[3])
    left, top = u[4] * (size - width), u[5] * (size - height)
    box = (x >= left) & (x < left + width) & (y >= top) & (y < top + height)

    lo, span = size / 8.0, size * 0.75
    p = [lo + span * ui for ui in u[2:8]]
    radius = size * (1.5 + 2.0 * u[8]) / 28.0
    stroke = ((_segment_distance(y, x, p[0], p[1], p[2], p[3]) <= radius)
              | (_segment_distance(y, x, p[2], p[3], p[4], p[5]) <= radius))

    half = _half(xp.floor(4.0 * draw[:, 2]).astype(xp.int64), size)

    kind = xp.floor(3.0 * u[1]).astype(xp.int64)
    masks = xp.where(kind == 0, box, xp.where(kind == 1, stroke, half))
    masks = masks | (u[0] < all_fraction)
    return masks.astype(dtype)[:, None]


def mask_to_grid(mask, grid: int):
    """(n, 1, grid, grid): cell = 1 if ANY of its pixels is to be filled.  ``mask`` is
    (n, 1, S, S) or (S, S) with S a multiple of ``grid`` (28 -> 7 for the latent grid, 28 -> 28
    is the identity on a 0/1 mask).  So no pixel to fill hides in a known cell (known cells are
    exactly those whose pixels are all known)."""
    xp = backend.xp()
    mask = backend.to_device(backend.array_of(mask))
    if mask.ndim == 2:
        mask = mask[None, None]
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != mask.shape[3]:
        raise ValueError(f"mask: expected (n, 1, S, S) or (S, S), got shape {mask.shape}")
    n, _, s, _ = mask.shape
    if grid < 1 or s % grid:
        raise ValueError(f"grid: expected a divisor of the mask size {s}, got {grid}")
    f = s // grid
    cells = (mask > 0).reshape(n, 1, grid, f, grid, f).any(axis=(3, 5))
    return xp.asarray(cells, dtype=backend.default_dtype())


def masked_image(x, mask):
    """x in [-1, 1] (n, 1, S, S) with every pixel to fill (mask > 0) set to 0, mid-grey,
    distinct from the -1 background: ``where(mask > 0, 0, x)``, so nothing under the mask (not
    even a NaN) reaches the conditioning.  ``mask`` is (n, 1, S, S) or broadcastable to x."""
    xp = backend.xp()
    x = backend.to_device(backend.array_of(x))
    mask = backend.to_device(backend.array_of(mask))
    return xp.where(mask > 0, xp.zeros((), dtype=x.dtype), x)
