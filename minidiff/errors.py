"""Checking what a user gives minidiff, once, before any work, with one line that says what.

Every command and every loader reports a bad input the same way:

* it raises ``MinidiffInputError`` (or a subclass: ``ConfigError``, ``CheckpointError``,
  ``MnistDataError``, ``StateDictError``...) whose message starts with the name of the
  argument, then what was expected and what came: ``--steps: expected an integer in
  [1, 1000], got 0``.  An optional ``hint`` says what to do about it;
* ``minidiff.commands.main`` turns such an error into one line on stderr, ``minidiff: MESSAGE;
  HINT``, and exit status 2.  Any *other* exception is a bug in minidiff and keeps its
  traceback;
* command-line parsers are ``commands._args.ArgumentParser``: argparse's own complaints
  (a missing value, ``--steps abc``) come out as one line too, without the usage block;
* a command's ``main(argv)`` is decorated with ``commands._args.command``, which does the
  same one-line report when it is run on its own (``python -m minidiff.commands.sample``, a
  test calling it).

The ``check_*`` helpers return the value they checked, so a command reads
``steps = check_int("--steps", args.steps, low=1, high=T)``.  A new command needs nothing
else: raise or check, and the dispatcher does the rest.
"""
from __future__ import annotations

import math
import numbers
import os
import re
import tempfile

__all__ = ["MinidiffInputError", "BackendMismatchError", "one_line", "shorten", "describe_range",
           "check_int", "check_float", "check_choice", "check_memory", "memory_available",
           "check_input_file", "check_output_path", "check_output_folder", "check_outputs",
           "check_run_folder"]


class MinidiffInputError(ValueError):
    """Something a user gave minidiff (an option, a file, a configuration) cannot be used.

    ``str(error)`` is the message; ``error.hint`` (or None) says what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class BackendMismatchError(TypeError):
    """An operation met arrays that live on two different backends (``minidiff.backend``)."""


#: the longest quoted value or unbroken word an error line echoes whole
LONGEST_ECHO = 60
_ECHOED = re.compile(r"'[^']{%d,}'|\"[^\"]{%d,}\"|[^\s'\"]{%d,}"
                     % (LONGEST_ECHO + 3, LONGEST_ECHO + 3, 2 * LONGEST_ECHO + 1))


def shorten(text: str, limit: int = LONGEST_ECHO) -> str:
    """``text`` itself if it is at most ``limit`` characters; else its start, "...", and how
    long it was: a 30,000-character prompt is not echoed whole."""
    if len(text) <= limit:
        return text
    return f"{text[:limit - 20]}... ({len(text):,} characters)"


def one_line(error: BaseException) -> str:
    """The error (and its hint, when it has one) as one line, whitespace collapsed; a long
    value the user gave (a quoted string, an unbroken word such as a path) is shortened."""
    text = " ".join(str(error).split()) or type(error).__name__
    hint = getattr(error, "hint", None)
    line = f"{text}; {' '.join(hint.split())}" if hint else text

    def short(match):
        value = match.group(0)
        if value[0] in "'\"":
            return value[0] + shorten(value[1:-1]) + value[-1]
        return shorten(value, 2 * LONGEST_ECHO)
    return _ECHOED.sub(short, line)


# ----------------------------------------------------------------------------- values

def describe_range(low, high, closed_high: bool = True) -> str:
    if low is not None and high is not None:
        return f"in [{low}, {high}{']' if closed_high else ')'}"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}" if closed_high else f"< {high}"
    return ""


def check_int(name: str, value, low=None, high=None):
    """``value`` if it is an integer within [low, high] (either bound may be None)."""
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not is_int or (low is not None and value < low) or (high is not None and value > high):
        bounds = describe_range(low, high)
        raise MinidiffInputError(f"{name}: expected an integer{' ' + bounds if bounds else ''}"
                                 f", got {value!r}")
    return value


def check_float(name: str, value, low=None, high=None, high_open: bool = False):
    """``value`` if it is a finite number within [low, high] (or [low, high) with
    ``high_open``)."""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    bad = not is_number or not math.isfinite(value)
    if not bad:
        bad = ((low is not None and value < low) or
               (high is not None and (value >= high if high_open else value > high)))
    if bad:
        bounds = describe_range(low, high, closed_high=not high_open)
        raise MinidiffInputError(f"{name}: expected a finite number"
                                 f"{' ' + bounds if bounds else ''}, got {value!r}")
    return value


def check_choice(name: str, value, choices):
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise MinidiffInputError(f"{name}: expected one of {', '.join(map(str, choices))}, "
                                 f"got {value!r}")
    return value


def memory_available() -> int | None:
    """Bytes of memory this machine can give a new job now (Linux' MemAvailable, else the
    physical memory), or None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    return ""


#: the share of the available memory one command's results may hold
MEMORY_SHARE = 0.5


def check_memory(name: str, count: int, bytes_each: int, what: str = "items",
                 hint: str | None = None) -> int:
    """``count`` if ``count`` results of ``bytes_each`` bytes, all held at once, fit in half
    the memory this machine has available; refused in one line before any of them is made.

    The rule every command applies to what accumulates (samples, their features, frames):
    the working memory of one batch is bounded by ``--batch``; what grows with the count is
    refused when it could not be held, instead of ending, minutes later, in a memory error."""
    available = memory_available()
    if available is None or count * bytes_each <= MEMORY_SHARE * available:
        return count
    most = max(0, int(MEMORY_SHARE * available // bytes_each))
    raise MinidiffInputError(
        f"{name}: {count:,} {what} would hold {_bytes(count * bytes_each)} at once "
        f"({bytes_each:,} bytes each), more than half of the {_bytes(available)} this machine "
        f"has available; expected at most {most:,}",
        hint or "split the job into several runs (another --seed each)")


# ----------------------------------------------------------------------------- files

def check_input_file(name: str, path, hint: str | None = None) -> str:
    """``path`` if it names an existing, readable file (not a folder)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MinidiffInputError(f"{name}: no such file: {path}", hint)
    if os.path.isdir(path):
        raise MinidiffInputError(f"{name}: {path} is a folder, expected a file", hint)
    if not os.access(path, os.R_OK):
        raise MinidiffInputError(f"{name}: {path} is not readable (permissions)", hint)
    return path


def _writable_folder(name: str, folder: str) -> None:
    """Refuse ``folder`` unless it exists as a writable folder or can be created."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):          # the nearest part of the path that exists
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise MinidiffInputError(f"{name}: cannot write under {folder}: {probe} is a file, "
                                 "not a folder")
    try:         # permissions alone miss a read-only file system, and a root user
        if not os.access(probe, os.W_OK | os.X_OK):
            raise PermissionError
        os.rmdir(tempfile.mkdtemp(prefix=".minidiff-probe-", dir=probe))
    except OSError:
        raise MinidiffInputError(f"{name}: cannot write under {folder}: {probe} is not "
                                 "writable (permissions or a read-only file system)",
                                 f"give {name} a folder you can write in") from None


def check_output_path(name: str, path, extensions) -> str:
    """``path`` if a file with one of ``extensions`` (".png", ...) can be written there.

    Checked before any work, so that minutes of sampling are never lost to a typo: the
    extension, that the path is not a folder, that an existing file is writable, and that
    its folder exists and is writable or can be created."""
    path = os.fspath(path)
    extensions = tuple(e.lower() for e in extensions)
    if not path or path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise MinidiffInputError(f"{name}: {path or repr(path)} is a folder; expected a file "
                                 f"name ending in {' or '.join(extensions)}")
    if not path.lower().endswith(extensions):
        found = os.path.splitext(path)[1] or "no extension"
        raise MinidiffInputError(f"{name}: expected a file name ending in "
                                 f"{' or '.join(extensions)}, got {path} ({found})")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise MinidiffInputError(f"{name}: {path} exists and is not writable (permissions)")
    _writable_folder(name, os.path.dirname(os.path.abspath(path)))
    return path


def check_output_folder(name: str, folder) -> str:
    """``folder`` if files can be written in it: an existing writable folder, or one that
    can be created (its nearest existing parent is a writable folder)."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise MinidiffInputError(f"{name}: {folder} is a file, expected a folder")
    _writable_folder(name, folder)
    return folder


def _same(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)          # links and hard links too
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs: dict, inputs: dict | None = None) -> None:
    """Refuse an output that is one of the command's inputs, or another of its outputs.

    ``outputs`` and ``inputs``: {argument: path, a list of paths, or None (not given)}.  Paths
    are compared as the files they name (``..``, symbolic and hard links resolved), so
    ``--out m.npz`` never replaces ``--checkpoint m.npz`` and ``--strip`` never the grid."""
    def pairs(table):
        for argument, paths in (table or {}).items():
            for path in ([paths] if isinstance(paths, (str, os.PathLike)) else paths or ()):
                yield argument, os.fspath(path)
    seen = []
    for argument, path in pairs(outputs):
        for other, earlier in seen:
            if _same(path, earlier):
                raise MinidiffInputError(f"{argument}: {path} is also {other}; give each output "
                                         "its own file name")
        for other, source in pairs(inputs):
            if _same(path, source):
                raise MinidiffInputError(f"{argument}: {path} is also {other}, an input it "
                                         "would replace; choose another file name")
        seen.append((argument, path))


def check_run_folder(name: str, folder, resume: bool, overwrite: bool) -> str:
    """``folder`` if a run may be written into it: absent or empty, or ``resume`` (continue
    the run in it) or ``overwrite`` (replace it) was asked for explicitly."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise MinidiffInputError(f"{name}: {folder} is a file, expected a run folder")
    if resume and overwrite:
        raise MinidiffInputError("--resume and --overwrite: give one of them, not both")
    if os.path.isdir(folder) and os.listdir(folder) and not (resume or overwrite):
        raise MinidiffInputError(
            f"{name}: {folder} already holds a run ({', '.join(sorted(os.listdir(folder))[:3])}"
            f"{', ...' if len(os.listdir(folder)) > 3 else ''})",
            "add --resume to continue it, --overwrite to replace it, or choose another --out")
    _writable_folder(name, folder)
    return folder


# ----------------------------------------------------------------------------- argparse


