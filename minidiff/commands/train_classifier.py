"""Train the MNIST classifier behind minidiff's FID (``minidiff eval train-classifier`` or
``python -m minidiff.commands.train_classifier``).

Adam (lr 1e-3, cosine decay to 0), batch 128, cross-entropy, a few epochs on the 60,000
training images; prints the test accuracy and writes the parameters to ``--out``.
"""
import argparse
import sys

from minidiff.commands._args import ArgumentParser, float_arg, int_arg
from minidiff.errors import check_output_path
from minidiff.evaluate.classifier import DEFAULT_PATH
from minidiff.evaluate.train_classifier import train


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="minidiff eval train-classifier",
                            description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int_arg(1), default=4, help="passes over the data")
    parser.add_argument("--batch", type=int_arg(1), default=128, help="images per step")
    parser.add_argument("--lr", type=float_arg(0.0), default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int_arg(0), default=0, help="seed of the run")
    parser.add_argument("--out", default=DEFAULT_PATH, help="where to write the classifier "
                        "(.npz; default: the shipped one)")
    parser.add_argument("--init", default=None, help="start from this classifier file")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_output_path("--out", args.out, (".npz",))
    train(args.epochs, args.batch, args.lr, args.seed, args.out, init=args.init)
    return 0


if __name__ == "__main__":
    sys.exit(main())
