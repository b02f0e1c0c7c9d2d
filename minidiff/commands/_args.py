"""Command-line parsing shared by every command: one-line argparse errors, numeric option
types, and the ``@command`` decorator that turns a ``MinidiffInputError`` into one line on
stderr and exit status 2, and Ctrl-C into one line and exit status 130 (any other exception
is a bug and keeps its traceback)."""
from __future__ import annotations

import argparse
import functools
import sys

from minidiff.diffusion import SAMPLERS
from minidiff.errors import MinidiffInputError, check_float, check_int, describe_range, one_line

__all__ = ["INPUT_ERROR", "INTERRUPTED", "report", "interrupted", "command", "ArgumentParser",
           "int_arg", "float_arg", "add_sampler_options"]


#: exit status of a bad input (argparse uses the same)
INPUT_ERROR = 2
#: exit status after Ctrl-C (128 + SIGINT, as a shell reports it)
INTERRUPTED = 130


def report(error: BaseException) -> int:
    """Print a user's error as one line, ``minidiff: ...``, on stderr; returns 2."""
    print(f"minidiff: {one_line(error)}", file=sys.stderr)
    return INPUT_ERROR


def interrupted() -> int:
    """Say in one line that Ctrl-C stopped the command; returns 130.  Every file minidiff
    writes is written whole or not at all (``backend.atomic_file``), so none is left
    half-written."""
    print("minidiff: interrupted (Ctrl-C); files are written whole or not at all, so none "
          "is left half-written", file=sys.stderr)
    return INTERRUPTED


def command(main):
    """Decorate a command's ``main(argv) -> int``: a ``MinidiffInputError`` becomes one line
    on stderr and exit status 2, Ctrl-C one line and exit status 130; every other exception
    propagates with its traceback."""
    @functools.wraps(main)
    def run(argv=None):
        try:
            return main(argv)
        except MinidiffInputError as error:
            return report(error)
        except KeyboardInterrupt:
            return interrupted()
    return run


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its complaints as one line (``PROG: argument --x: ...``) and exit 2."""

    def error(self, message):
        text = " ".join(message.split())
        print(f"{self.prog}: {text} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def int_arg(low=None, high=None):
    """An argparse ``type``: an integer within [low, high]."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            return check_int("value", value, low, high)
        except MinidiffInputError:
            raise argparse.ArgumentTypeError(
                f"expected an integer {describe_range(low, high)}, got {text}") from None
    parse.__name__ = "integer"
    return parse


def float_arg(low=None, high=None, high_open: bool = False):
    """An argparse ``type``: a finite number within [low, high] (or [low, high))."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return check_float("value", value, low, high, high_open)
        except MinidiffInputError:
            bounds = describe_range(low, high, closed_high=not high_open)
            raise argparse.ArgumentTypeError(
                f"expected a finite number{' ' + bounds if bounds else ''}, got {text}") from None
    parse.__name__ = "number"
    return parse


def add_sampler_options(parser, all_steps: bool = False) -> None:
    """--sampler, --steps and --eta, as ``minidiff sample``, ``inpaint`` and ``eval`` take
    them: each of --sampler and --steps left out (None) is the checkpoint's own, its config's
    ``sampler`` / ``sample_steps`` (``pipelines.load.model_sampler``); ``all_steps``:
    --steps 0 is all T steps (eval)."""
    parser.add_argument("--sampler", choices=SAMPLERS, default=None,
                        help="ddim (deterministic with --eta 0) or ddpm (ancestral, "
                             "Algorithm 2) (default: the checkpoint's, its config's sampler)")
    parser.add_argument("--steps", type=int_arg(0 if all_steps else 1), default=None,
                        help="sampling steps, 1..T" + (", 0 for all T" if all_steps else "")
                        + " (default: the checkpoint's, its config's sample_steps)")
    parser.add_argument("--eta", type=float_arg(0.0, 1.0), default=0.0,
                        help="DDIM noise in [0, 1]: 0 deterministic (default), 1 as much as "
                             "DDPM; ddpm ignores it")
