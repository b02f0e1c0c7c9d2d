"""The ``minidiff`` command line: ``minidiff demo``, ``minidiff bench layers`` and friends."""
from __future__ import annotations

import argparse
import importlib
import sys

from minidiff import backend
from minidiff.data import MnistDataError

#: ``minidiff bench NAME`` runs ``main(argv)`` of the module named here.
BENCHMARKS = {"layers": "minidiff.bench.layers"}


def _demo(args) -> int:
    from minidiff import demo
    demo.run(steps=args.steps, batch=args.batch, seed=args.seed, out=args.out)
    return 0


def _bench(args) -> int:
    if args.name not in BENCHMARKS:
        print(f"minidiff bench: unknown benchmark {args.name!r}; choose from "
              f"{', '.join(sorted(BENCHMARKS))}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[args.name])
    return module.main(args.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minidiff", description=__doc__)
    parser.add_argument("--backend", choices=backend.BACKENDS, default=None,
                        help="array library to run on (default: numpy, or $MINIDIFF_BACKEND)")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train a small perceptron on MNIST with the engine")
    demo.add_argument("--steps", type=int, default=2000)
    demo.add_argument("--batch", type=int, default=128)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(handler=_demo)

    bench = commands.add_parser("bench", help="speed benchmarks (against torch where installed)")
    bench.add_argument("name", help=f"one of: {', '.join(sorted(BENCHMARKS))}")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.backend:
        try:
            backend.set_backend(args.backend)
        except backend.BackendUnavailableError as error:
            print(f"minidiff: {error}", file=sys.stderr)
            return 2
    try:
        return args.handler(args)
    except MnistDataError as error:
        print(f"minidiff: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
