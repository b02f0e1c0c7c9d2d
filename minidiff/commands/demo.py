"""``minidiff demo``: the engine learning something real, in about half a minute on a CPU.

A two-layer perceptron, written with nothing but ``Tensor`` operations, learns to classify
MNIST digits: logits = relu(x W1 + b1) W2 + b2, loss = mean cross-entropy through
``log_softmax``, parameters updated by plain gradient descent with momentum.  It prints the
loss as it goes, the test accuracy at the end, and saves the loss curve.  Training the
diffusion model replaces this demo as the main job once ``minidiff train`` exists.
"""
import os
import sys

from minidiff.commands._args import ArgumentParser, command, int_arg
from minidiff.errors import MinidiffInputError, check_output_path
from minidiff.train.demo import run


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="minidiff demo", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int_arg(1), default=2000,
                        help="gradient steps (default 2000)")
    parser.add_argument("--batch", type=int_arg(1, 60_000), default=128,
                        help="images per step, at most the 60,000 of MNIST (default 128)")
    parser.add_argument("--seed", type=int_arg(0), default=0,
                        help="seed of the weights and the batches (default 0)")
    parser.add_argument("--out", default="runs/demo",
                        help="folder for loss.png (default runs/demo)")
    return parser


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise MinidiffInputError(f"--out: {args.out} is a file, expected a folder")
    check_output_path("--out", os.path.join(args.out, "loss.png"), (".png",))
    run(steps=args.steps, batch=args.batch, seed=args.seed, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
