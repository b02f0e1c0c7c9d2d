"""Saving images: a grid of digits (PNG), a denoising animation (GIF), a strip (PNG).

All functions take host or device arrays of uint8 in [0, 255] shaped (N, 1, H, W) (use
``data.from_unit_range`` to get there from the model's [-1, 1]) and work on the host with
Pillow; ``scale`` enlarges each pixel so 28x28 digits are visible.
"""
from __future__ import annotations

import math

from minidiff import backend

__all__ = ["make_grid", "save_grid", "save_gif", "save_strip"]


def make_grid(images, nrow: int | None = None, pad: int = 2, scale: int = 2):
    """One (H', W') uint8 host array: the images tiled ``nrow`` per row, ``pad`` pixels apart."""
    images = backend.to_host(backend.array_of(images))
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images: expected (N, 1, H, W), got shape {images.shape}")
    if images.dtype != backend.host.uint8:
        raise ValueError(f"images: expected uint8 in [0, 255], got {images.dtype}")
    n, _, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = backend.host.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad),
                              dtype=backend.host.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = images[i, 0]
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def save_grid(images, path, nrow: int | None = None, pad: int = 2, scale: int = 2,
              labels=None) -> None:
    """Write the images as one PNG grid (square-ish unless ``nrow`` is given); ``labels``,
    one per row, are written in a margin on the left."""
    from PIL import Image, ImageDraw  # noqa: PLC0415
    picture = Image.fromarray(make_grid(images, nrow, pad, scale), mode="L")
    if labels:
        rows = len(labels)
        margin = 6 * max(len(text) for text in labels) + 8
        labelled = Image.new("L", (picture.width + margin, picture.height), 255)
        labelled.paste(picture, (margin, 0))
        draw = ImageDraw.Draw(labelled)
        row_height = picture.height / rows
        for i, text in enumerate(labels):
            draw.text((3, int((i + 0.5) * row_height) - 5), text, fill=0)
        picture = labelled
    with backend.atomic_file(path) as temporary:       # whole or not at all (Ctrl-C)
        picture.save(temporary)


def save_gif(frames, path, nrow: int | None = None, duration_ms: int = 80,
             hold_last_ms: int = 1500, scale: int = 2) -> None:
    """An animated GIF with one grid per frame (e.g. x_T ... x_0); the last frame is held."""
    from PIL import Image  # noqa: PLC0415
    if not frames:
        raise ValueError("save_gif: no frames")
    pictures = [Image.fromarray(make_grid(f, nrow, scale=scale), mode="L") for f in frames]
    durations = [duration_ms] * (len(pictures) - 1) + [hold_last_ms]
    with backend.atomic_file(path) as temporary:
        pictures[0].save(temporary, save_all=True, append_images=pictures[1:],
                         duration=durations, loop=0)


def save_strip(images, path, scale: int = 3) -> None:
    """One row: the states of a single digit through the reverse process, left to right."""
    images = backend.to_host(backend.array_of(images))
    save_grid(images, path, nrow=len(images), scale=scale)
