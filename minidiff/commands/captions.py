"""Lesson 11's look at the caption attributes: digits sorted by thickness and by slant.

``python3 -m minidiff.commands.captions --out DIR [--quick]`` measures the tertile edges (on the
training set; ``--quick``: its first 5,000 images), prints them with example captions of test
digits, and saves ``DIR/attributes.png``: one strip per attribute, test digits at evenly spaced
quantiles from the lowest value (left) to the highest (right).
"""
import argparse
import os
import sys

from minidiff import backend
from minidiff.data.caption_figures import save_attribute_figure
from minidiff.data.captions import CaptionStats, N_CHOICES
from minidiff.data.mnist import load_mnist


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
    sys.exit(main())
