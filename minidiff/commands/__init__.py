"""The ``minidiff`` command line.

``minidiff [--backend numpy|cupy|cupy-sim] COMMAND [options]``; each command lives in its own module
with a ``main(argv) -> int`` that parses its own options (``minidiff COMMAND --help``).

Errors in what the user gave (``MinidiffInputError`` and its subclasses, see
``minidiff/errors.py``) end as one line, ``minidiff: MESSAGE; HINT``, with exit status 2;
any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import minidiff
from minidiff import backend
from minidiff.commands._args import ArgumentParser, INPUT_ERROR, interrupted, report
from minidiff.config.presets import PRESETS
from minidiff.errors import MinidiffInputError

#: command -> (module with ``main(argv)``, one-line help)
COMMANDS = {
    "demo": ("minidiff.commands.demo", "train a small perceptron on MNIST with the engine (~10 s)"),
    "train": ("minidiff.commands.train", "train a diffusion model or an autoencoder: --preset "
                                         + " | ".join(PRESETS)),
    "train-ae": ("minidiff.commands.train_ae", "train the autoencoder (train --preset ae-quick)"),
    "sample": ("minidiff.commands.sample", "draw digits from a checkpoint (grid, --gif, --strip)"),
    "inpaint": ("minidiff.commands.inpaint", "fill the masked part of digits (concat model or "
                                    "RePaint-style replacement)"),
    "eval": ("minidiff.commands.eval", "FID, classifier confidence and bits/dim of a checkpoint"),
    "claim": ("minidiff.commands.claim", "the article's claim measured: bits/dim, FID and samples of "
                                "the simple, vlb and hybrid models (lesson 13)"),
    "bench": ("minidiff.commands.bench", "speed benchmarks: layers | unet | ldm (torch if installed)"),
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="minidiff", description=__doc__.split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"minidiff {minidiff.__version__}")
    parser.add_argument("--backend", choices=backend.BACKENDS, default=None,
                        help="array library to run on (default: numpy, or $MINIDIFF_BACKEND)")
    listing = "\n".join(f"  {name:8s} {help_text}" for name, (_, help_text) in COMMANDS.items())
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND",
                        help="one of the commands below; 'minidiff COMMAND --help' for its options")
    parser.epilog = "commands:\n" + listing
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = next((i for i, arg in enumerate(argv) if arg in COMMANDS), len(argv))
    args = build_parser().parse_args(argv[:split + 1])
    args.rest = argv[split + 1:]
    if args.backend:
        try:
            backend.set_backend(args.backend)
        except backend.BackendUnavailableError as error:
            return report(error)
    elif backend.environment_error:   # already said in one line when minidiff was imported
        return INPUT_ERROR
    try:
        module = importlib.import_module(COMMANDS[args.command][0])
        return module.main(args.rest) or 0
    except (MinidiffInputError, backend.BackendUnavailableError) as error:
        return report(error)
    except KeyboardInterrupt:
        return interrupted()


if __name__ == "__main__":
    sys.exit(main())
