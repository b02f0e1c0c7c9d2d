"""Where minidiff finds the files it ships: MNIST, the FID classifier, the quick model.

They live in ``data/`` of the repository (``data/mnist/*.gz``, ``data/checkpoints/*.npz``),
and ``pip install .`` copies them to ``<prefix>/share/minidiff/data/`` (setup.cfg,
``[options.data_files]``), so an installed minidiff finds them from any working folder.
One function, ``find``, looks for a file under ``data/`` in this order:

1. ``$MINIDIFF_DATA``, when it is set (and then *only* there: an explicit choice wins);
2. ``data/`` in the working folder (a clone you run from);
3. ``data/`` of the source tree this package was imported from (a clone, an editable
   install, a lesson run from ``lessons/`` as a notebook would);
4. ``share/minidiff/data/`` of the installation (``sys.prefix``, or the user base of a
   ``pip install --user``).

Every "not found" error lists the places it looked.  ``resolve_user_path`` lets the
commands take the README's ``data/checkpoints/quick.npz`` from any folder: every option that
names a file (``--checkpoint``, ``--classifier``, ``--autoencoder``, ``bench ldm --pixel``...)
goes through it, so a shipped file is found, or missed, the same way everywhere.
"""
from __future__ import annotations

import os
import site
import sys

from minidiff.errors import MinidiffInputError

__all__ = ["ENVIRONMENT", "SOURCE_DATA", "data_roots", "find", "resolve_user_path", "DataNotFoundError"]

ENVIRONMENT = "MINIDIFF_DATA"
#: ``data/`` of the source checkout this package was imported from (an editable install)
SOURCE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "data")
_SHARE = os.path.join("share", "minidiff", "data")


class DataNotFoundError(MinidiffInputError, FileNotFoundError):
    """A shipped file is in none of the places minidiff looks."""


def data_roots() -> list:
    """``[(where, folder)]``: the folders searched, in order (see the module docstring)."""
    if os.environ.get(ENVIRONMENT):
        return [(f"${ENVIRONMENT}", os.environ[ENVIRONMENT])]
    roots = [("the working folder", os.path.join(os.getcwd(), "data")),
             ("the source tree", SOURCE_DATA),
             ("the installation", os.path.join(sys.prefix, _SHARE))]
    user_base = getattr(site, "USER_BASE", None)
    if user_base:
        roots.append(("the user installation", os.path.join(user_base, _SHARE)))
    seen, unique = set(), []
    for where, folder in roots:
        key = os.path.realpath(folder)
        if key not in seen:
            seen.add(key)
            unique.append((where, folder))
    return unique


def searched(relative: str) -> str:
    """The places ``find(relative)`` looks, as one phrase for an error message."""
    if os.environ.get(ENVIRONMENT):
        return (f"only ${ENVIRONMENT} {os.path.join(os.environ[ENVIRONMENT], relative)} "
                f"(set, it replaces the other places; unset it to search the working "
                f"folder, the source tree and the installation)")
    return "; ".join(f"{where} {os.path.join(folder, relative)}"
                     for where, folder in data_roots())


def find(relative: str) -> str:
    """The path of ``data/<relative>`` (a file or a folder), from the first place that has
    it; ``DataNotFoundError`` listing every place searched otherwise."""
    for _, folder in data_roots():
        path = os.path.join(folder, relative)
        if os.path.exists(path):
            return path
    raise DataNotFoundError(f"data/{relative} not found; looked in: {searched(relative)}",
                            f"set {ENVIRONMENT} to a folder holding {relative}, or run "
                            "from a clone of minidiff")


def resolve_user_path(path, name: str | None = None) -> str:
    """``path`` itself when it exists; a relative ``data/...`` path that does not exist
    here is looked up with ``find`` (so ``--checkpoint data/checkpoints/quick.npz`` works
    from any folder after ``pip install .``), and if it is in none of the places searched,
    ``DataNotFoundError`` (starting with ``name``, the option) lists them all; anything else
    is returned unchanged."""
    path = os.fspath(path)
    parts = os.path.normpath(path).split(os.sep)
    if os.path.exists(path) or os.path.isabs(path) or len(parts) < 2 or parts[0] != "data":
        return path
    relative = os.path.join(*parts[1:])
    try:
        return find(relative)
    except DataNotFoundError:
        here = os.path.abspath(path)
        raise DataNotFoundError(f"{name + ': ' if name else ''}no such file: {path}; looked "
                                f"in: here {here}; {searched(relative)}") from None
