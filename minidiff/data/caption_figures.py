"""Lesson 11's look at the caption attributes: test digits sorted by thickness and by slant
(``save_attribute_figure``; from the command line: ``python3 -m minidiff.commands.captions``).
"""
from __future__ import annotations


from minidiff import backend
from minidiff.data import images
from minidiff.data.captions import measure_slant, measure_thickness

__all__ = ["sorted_by_attribute", "save_attribute_figure"]


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
