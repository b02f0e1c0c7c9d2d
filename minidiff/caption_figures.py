"""Lesson 11's look at the caption attributes: digits sorted by thickness and by slant.

``python3 -m minidiff.caption_figures --out DIR [--quick]`` measures the tertile edges (on the
training set; ``--quick``: its first 5,000 images), prints them with example captions of test
digits, and saves ``DIR/attributes.png``: one strip per attribute, test digits at evenly spaced
quantiles from the lowest value (left) to the highest (right).
"""
from __future__ import annotations

import argparse
import os

from minidiff import backend, images
from minidiff.captions import CaptionStats, N_CHOICES, measure_slant, measure_thickness
from minidiff.data import load_mnist

__all__ = ["sorted_by_attribute", "save_attribute_figure", "main"]


def sorted_by_attribute(digits, n: int = 16) -> dict:
    """``{"thickness": (values, picks), "slant": (values, picks)}``: ``n`` of ``digits``
    (uint8 (N, 1, 28, 28)) at evenly spaced quantiles (0 .. 1) of each attribute, ascending;
    ``values`` (n,) float64, ``picks`` (n, 1, 28, 28) uint8."""
    np = backend.host
    digits = backend.to_host(backend.array_of(digits))
    result = {}
    for name, measure in (("thickness", measure_thickness), ("slant", measure_slant)):
        values = measure(digits)
        order = np.argsort(values, kind="stable")
        ranks = np.round(np.linspace(0, len(order) - 1, n)).astype(np.int64)
        result[name] = (values[order[ranks]], digits[order[ranks]])
    return result


def save_attribute_figure(digits, path, n: int = 16) -> dict:
    """Write the two strips (thickness, then slant) as one labelled PNG; returns the dict of
    ``sorted_by_attribute``."""
    np = backend.host
    strips = sorted_by_attribute(digits, n)
    rows = np.concatenate([picks for _, picks in strips.values()])
    labels = [f"{name} {values[0]:.2f}..{values[-1]:.2f}" for name, (values, _) in strips.items()]
    images.save_grid(rows, path, nrow=n, scale=2, labels=labels)
    return strips


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lesson11", help="folder for attributes.png")
    parser.add_argument("--quick", action="store_true", help="edges from 5,000 training images")
    args = parser.parse_args(argv)
    train, _ = load_mnist("train")
    test, test_labels = load_mnist("test")
    if args.quick:
        train, test, test_labels = train[:5000], test[:2000], test_labels[:2000]
    stats = CaptionStats.from_images(train)
    print(f"thickness tertile edges (pixels): {stats.thickness_edges[0]:.4f} "
          f"{stats.thickness_edges[1]:.4f}")
    print(f"slant tertile edges (|shear|):    {stats.slant_edges[0]:.4f} "
          f"{stats.slant_edges[1]:.4f}")
    choice = (backend.host.arange(10) * 7 + 3) % N_CHOICES
    for index, caption in enumerate(stats.captions(test[:10], test_labels[:10], choice)):
        print(f"test:{index}  {caption!r}")
    path = os.path.join(args.out, "attributes.png")
    save_attribute_figure(test, path)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
