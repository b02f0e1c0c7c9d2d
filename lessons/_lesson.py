"""What every lesson does before its first cell of content (not a lesson itself).

    from _lesson import host, lesson_parser, pyplot, show, start
    args, out_dir = start(lesson_parser("Lesson 04: the loss"), dtype="float64")

* finds minidiff: the installed package, else the checkout this file lives in;
* gives the options every lesson has, ``--quick`` (tiny sizes: what the tests run) and
  ``--out DIR`` (where the figures go, made if missing), to which a lesson adds its own;
  unknown options are ignored, so a lesson also runs inside Jupyter;
* sets the default float dtype and seeds minidiff's one generator;
* ``show`` prints a named result, ``host`` brings a Tensor or array to NumPy, and ``pyplot``
  returns matplotlib's pyplot (non-interactive), or None with a note when it is missing.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

try:
    import minidiff as md
except ImportError:  # run from a checkout without installing: use the repository's package
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    import minidiff as md
from minidiff import backend

__all__ = ["lesson_parser", "start", "show", "host", "pyplot"]

QUICK_HELP = "a fast pass with tiny sizes (what the tests run)"


def lesson_parser(description: str, quick_help: str = QUICK_HELP) -> argparse.ArgumentParser:
    """The options every lesson has: ``--quick`` and ``--out``; a lesson adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", default="runs/lessons", help="folder for the figures")
    return parser


def start(parser: argparse.ArgumentParser, dtype: str | None = None, seed: int = 0):
    """``(args, out_dir)``: the options read (unknown ones ignored: Jupyter passes its own),
    the output folder made, the default dtype set when given, minidiff's generator seeded."""
    args, _ = parser.parse_known_args()
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        md.set_default_dtype(dtype)
    md.manual_seed(seed)
    return args, out_dir


def show(name: str, value, width: int = 44) -> None:
    """One result, its name right-aligned in ``width`` columns."""
    print(f"{name:>{width}s}: {value}")


def host(value):
    """A Tensor's or an array's values as a NumPy array."""
    return backend.to_host(backend.array_of(value))


def pyplot():
    """``matplotlib.pyplot`` with the file-only Agg backend, or None (the lesson then skips
    its figures and says so)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the figures (pip install matplotlib)")
        return None
    return plt
