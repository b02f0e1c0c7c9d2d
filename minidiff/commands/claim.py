"""``minidiff claim``: the article's claim, measured (lesson 13).

    minidiff claim [--checkpoints SIMPLE VLB HYBRID] [--full] [--json] [--out DIR]

"Training on the true variational bound yields better codelengths than training on the
simplified objective, but the latter yields the best sample quality" (Ho et al. 2020), and
learned variances get both (Nichol & Dhariwal 2021).  For each checkpoint (by default the
shipped data/checkpoints/claim_{simple,vlb,hybrid}.npz), evaluation only:

* **bits/dim, full bound**: every term of (4.2) on ``--bpd-images`` test images (its standard
  error over the images), split as the DDPM paper's Table 4 into the prior L_T, the
  distortion L_0 (the decoder) and the rate sum_{t>=1} L_t (the KL terms); the three add up
  to the total;
* **bits/dim, Monte-Carlo** on ``--mc-images`` test images: L_T and L_0 exact, the KL terms
  sampled at ``--bpd-samples`` steps per image (``minidiff eval``'s estimate);
* **t sampler**: the variance of the one-draw bound estimate with t uniform and with t drawn
  by the second moment of the per-t terms just measured (13.4);
* **FID** (``--n`` samples) and **classifier confidence**, sampled by DDPM ancestral sampling
  respaced to ``--steps``, each model with its own variance (fixed_small or learned), by
  ``minidiff eval``'s code;
* **samples** side by side, one row per model from the same seed: ``--out``/claim_samples.png.

A markdown table goes to stdout (``--json``: every figure as JSON instead); progress to
stderr.  ``--full`` is the issue's size: 1,000 images for the full bound, 10,000 for the
Monte-Carlo estimate and 10,000 samples for FID (hours on a CPU; docs/the-claim.md).
"""
import argparse
import json
import os
import sys

from minidiff.commands._args import ArgumentParser, command, int_arg
from minidiff.data.paths import resolve_user_path
from minidiff.errors import check_input_file, check_output_folder, check_outputs
from minidiff.evaluate.claim import SHIPPED, SIZES, claim, markdown_table
from minidiff.pipelines.sample import check_sample_count


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="minidiff claim", description=__doc__.split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", default=list(SHIPPED), metavar="NPZ",
                        help="the models to compare, one row each (default: the shipped "
                             "claim_simple, claim_vlb and claim_hybrid)")
    parser.add_argument("--full", action="store_true",
                        help="the issue's sizes: --bpd-images 1000 --mc-images 10000 --n 10000")
    parser.add_argument("--bpd-images", type=int_arg(2, 10_000), default=None,
                        help=f"test images for the full bound (default {SIZES['bpd_images'][0]})")
    parser.add_argument("--mc-images", type=int_arg(2, 10_000), default=None,
                        help="test images for the Monte-Carlo bound (default "
                             f"{SIZES['mc_images'][0]})")
    parser.add_argument("--bpd-samples", type=int_arg(1), default=4,
                        help="sampled KL terms per image in the Monte-Carlo bound (default 4)")
    parser.add_argument("--n", type=int_arg(2), default=None,
                        help=f"samples for FID and confidence (default {SIZES['n'][0]})")
    parser.add_argument("--steps", type=int_arg(1), default=50,
                        help="DDPM sampling steps, respaced (default 50)")
    parser.add_argument("--grid", type=int_arg(1, 64), default=12,
                        help="samples per model in claim_samples.png (default 12)")
    parser.add_argument("--batch", type=int_arg(1), default=250,
                        help="images per forward pass when sampling (default 250)")
    parser.add_argument("--seed", type=int_arg(0), default=0, help="seed (default 0)")
    parser.add_argument("--reference-images", type=int_arg(2, 10_000), default=10_000,
                        help="MNIST test images the FID compares with (default: all 10,000)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the train-vs-test FID floor")
    parser.add_argument("--classifier", default=None,
                        help="feature classifier (default: the shipped classifier.npz)")
    parser.add_argument("--stats-dir", default=os.path.join("runs", "fid_stats"),
                        help="cache of test-set feature statistics (default runs/fid_stats)")
    parser.add_argument("--out", default=os.path.join("runs", "claim"),
                        help="folder for the figures (default runs/claim)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    return parser


@command
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    for key, (small, full) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, full if args.full else small)
    args.checkpoints = [resolve_user_path(path, "--checkpoints") for path in args.checkpoints]
    for path in args.checkpoints:
        check_input_file("--checkpoints", path,
                         "train the three models (docs/the-claim.md) or pass --checkpoints")
    if args.classifier:
        args.classifier = resolve_user_path(args.classifier, "--classifier")
        check_input_file("--classifier", args.classifier)
    for name, folder in (("--out", args.out), ("--stats-dir", args.stats_dir)):
        check_output_folder(name, folder)
    check_outputs({"--out": os.path.join(args.out, "claim_samples.png")},
                  {"--checkpoints": args.checkpoints, "--classifier": args.classifier})
    check_sample_count("--n", args.n)
    result = claim(args)
    print(json.dumps(result, indent=2) if args.json else markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
