"""``minidiff eval``: how good is a trained diffusion model?  (Given an autoencoder checkpoint,
it reports reconstruction figures instead: ``autoencoder.py``.)

    minidiff eval --checkpoint runs/quick/checkpoint.npz [--n 10000] [--sampler ddpm --steps 100]
                  [--bpd-images 256 | --bpd-full] [--json]
    minidiff eval --checkpoint F --inpainting [--n 100] [--mask bottom] [--method replace]
                  [--image-guidance 2]
    minidiff eval --checkpoint F --prompts [--per-prompt 20] [--guidance 3] [--inpainting]
    minidiff eval train-classifier [--epochs 3]      (re-train the shipped feature classifier)

Figures:

* **FID** (``fid.py``) between ``--n`` generated samples and the 10,000 MNIST test images, on
  the 128-d penultimate features of minidiff's own MNIST classifier (``classifier.py``,
  shipped in data/checkpoints/classifier.npz).  An MNIST-specific FID, *not* Inception FID:
  comparable only between minidiff runs.  FID is biased upward for small sample counts, so
  the count is printed with it, and the train-vs-test FID at the same count is printed as the
  floor (what a generator reproducing the data distribution would score).  The test-set (and
  floor) statistics are cached under ``--stats-dir``, keyed by the classifier's checksum.
* **classifier confidence**: the mean max-softmax probability of the samples and their
  predicted-class histogram (a collapse onto a few digits shows up here).
* **bits/dim** (``likelihood.py``): the variational bound on the NLL of test images, a
  Monte-Carlo estimate with its standard error (``--bpd-images``, ``--bpd-samples``) or the
  full T-term bound (``--bpd-full``).

* **inpainting accuracy** (``--inpainting``, ``inpainting.py``; instead of the figures
  above): the fraction of the first ``--n`` test digits (default 100), masked by ``--mask``
  and completed by the model, that the classifier gives their true label, with the masked
  input's and the originals' accuracy as bounds.
* **prompted accuracy and attribute adherence** (``--prompts``, ``prompts.py``; a text model,
  instead of the figures above): the fraction of ``--per-prompt`` samples per digit word that
  the classifier labels as prompted, their diversity and FID; and how far "thick" / "thin"
  and "slanted" / "upright" prompts separate on the measured attribute.  With
  ``--inpainting`` too, the inpainting accuracy follows.

Every figure of generated samples draws them as the checkpoint says, with its config's
``sampler`` and ``sample_steps`` (a file written before the key: DDIM, 50 steps), unless
``--sampler`` / ``--steps`` say otherwise; the report names the ones used.

A latent diffusion model (``minidiff.data.spaces``) samples latents and decodes them with the
autoencoder it was trained on before they are scored; its bits/dim are not reported (the
bound would be on latents, not on the images' pixels).
"""
import json
import sys

from minidiff.commands._args import (ArgumentParser, add_sampler_options, command, float_arg,
                                     int_arg)
from minidiff.commands.train_classifier import main as train_main
from minidiff.data.paths import resolve_user_path
from minidiff.diffusion.guidance import MAX_GUIDANCE
from minidiff.errors import MinidiffInputError, check_input_file, check_int, check_output_folder
from minidiff.evaluate import autoencoder, inpainting, prompts
from minidiff.evaluate.classifier import load_classifier
from minidiff.evaluate.fid import DEFAULT_STATS_DIR
from minidiff.evaluate import model
from minidiff.evaluate.model import BPD_IMAGES, BPD_SAMPLES, INPAINT_N, PER_PROMPT
from minidiff.pipelines.sample import check_sample_count
from minidiff.progress import Progress


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="minidiff eval", description="FID, classifier confidence and bits/dim of a "
        "checkpoint ('minidiff eval train-classifier --help' re-trains the classifier)")
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint.npz or ema.npz written by minidiff train")
    parser.add_argument("--n", type=int_arg(2), default=None,
                        help="samples to generate for FID (default 10,000; fewer are biased), "
                             f"or test digits to inpaint (default {INPAINT_N})")
    add_sampler_options(parser, all_steps=True)
    parser.add_argument("--batch", type=int_arg(1), default=250,
                        help="images per forward pass (default 250)")
    parser.add_argument("--seed", type=int_arg(0), default=0,
                        help="seed of the samples (default 0)")
    parser.add_argument("--raw-weights", action="store_true",
                        help="use the raw weights instead of the EMA weights")
    parser.add_argument("--bpd-images", type=int_arg(0, 10_000), default=BPD_IMAGES,
                        help=f"test images for bits/dim (0 skips it; default {BPD_IMAGES})")
    parser.add_argument("--bpd-samples", type=int_arg(1), default=BPD_SAMPLES,
                        help="random timesteps per image for the Monte-Carlo bound "
                             f"(default {BPD_SAMPLES})")
    parser.add_argument("--bpd-full", action="store_true",
                        help="the full bound: all T terms per image (T forward passes each)")
    parser.add_argument("--reference-images", type=int_arg(2, 10_000), default=10_000,
                        help="MNIST test images the FID compares with (default: all 10,000)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the train-vs-test FID floor")
    parser.add_argument("--classifier", default=None,
                        help="feature classifier (default: the shipped "
                             "data/checkpoints/classifier.npz)")
    parser.add_argument("--stats-dir", default=DEFAULT_STATS_DIR,
                        help=f"cache of test-set feature statistics (default {DEFAULT_STATS_DIR})")
    parser.add_argument("--inpainting", action="store_true",
                        help="measure inpainting accuracy instead (inpainting.py)")
    parser.add_argument("--mask", default=None,
                        help="with --inpainting: the mask (as minidiff inpaint; default bottom)")
    parser.add_argument("--method", choices=("concat", "replace"), default=None,
                        help="with --inpainting: concat or replace (default: the model's)")
    parser.add_argument("--image-guidance", type=float_arg(0.0, MAX_GUIDANCE), default=None,
                        metavar="S", help="with --inpainting, a concat model: guidance over the "
                        "known part of the image (as minidiff inpaint; default: the model's "
                        "config, 1 for none)")
    parser.add_argument("--prompts", action="store_true",
                        help="a text model's prompted accuracy, FID and attribute adherence "
                             "instead (prompts.py); with --inpainting, its inpainting "
                             "accuracy too")
    parser.add_argument("--per-prompt", type=int_arg(1), default=None,
                        help=f"with --prompts: samples per prompt (default {PER_PROMPT})")
    parser.add_argument("--guidance", type=float_arg(0.0, MAX_GUIDANCE), default=None,
                        metavar="S", help="with --prompts: classifier-free guidance scale s in "
                        "[0, 100], eps_u + s (eps_c - eps_u) (11.4): 0 unconditional, 1 the "
                        "plain conditional model; Ho & Salimans' w is s - 1 (default: the "
                        "model's config)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    return parser


def _inpainting(args) -> dict:
    """``--inpainting``: ``inpainting.inpainting_accuracy`` of the command's arguments."""
    check_int("--n", args.n or INPAINT_N, low=1, high=10_000)
    return inpainting.inpainting_accuracy(
        args.checkpoint, args.n or INPAINT_N, args.mask or "bottom", args.method, args.sampler,
        args.steps, args.seed, args.batch, args.eta, classifier=load_classifier(
            args.classifier, name="--classifier"),
        use_ema=not args.raw_weights, progress=Progress("inpainting"),
        image_guidance=args.image_guidance)


def _prompts(args) -> dict:
    """``--prompts``: ``prompts.prompts_report`` of the command's arguments, with the
    inpainting accuracy under "inpainting" when --inpainting is given too."""
    if args.inpainting:                       # checked before the long sampling
        check_int("--n", args.n or INPAINT_N, low=1, high=10_000)
    result = prompts.prompts_report(
        args.checkpoint, args.per_prompt or PER_PROMPT, args.guidance, args.sampler,
        args.steps, args.eta, args.seed, args.batch, use_ema=not args.raw_weights,
        classifier=args.classifier, stats_dir=args.stats_dir,
        reference_images=args.reference_images, progress=Progress)
    if args.inpainting:
        result["inpainting"] = _inpainting(args)
    return result


@command
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-classifier"]:
        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    args.checkpoint = resolve_user_path(args.checkpoint, "--checkpoint")
    check_input_file("--checkpoint", args.checkpoint)
    if args.classifier:
        args.classifier = resolve_user_path(args.classifier, "--classifier")
        check_input_file("--classifier", args.classifier)
    for flag, value in (("--per-prompt", args.per_prompt), ("--guidance", args.guidance)):
        if value is not None and not args.prompts:
            raise MinidiffInputError(f"{flag}: only with --prompts (the text-model figures), "
                                     "which was not given")
    for flag, value in (("--mask", args.mask), ("--method", args.method),
                        ("--image-guidance", args.image_guidance)):
        if value is not None and not args.inpainting:
            raise MinidiffInputError(f"{flag}: only with --inpainting (the inpainting "
                                     "accuracy), which was not given")
    if args.prompts or not args.inpainting:         # the FID statistics are cached there
        check_output_folder("--stats-dir", args.stats_dir)
    if args.prompts:            # 20 prompts ("a thick 0" ... "a thin 9") at most at once
        check_sample_count("--per-prompt", 20 * (args.per_prompt or PER_PROMPT),
                           what=f"samples (20 prompts x --per-prompt "
                                f"{args.per_prompt or PER_PROMPT:,})")
    elif not args.inpainting:
        check_sample_count("--n", args.n or 10_000)
    if args.prompts:
        result = _prompts(args)
        text = prompts.report(result)
    elif args.inpainting:
        result = _inpainting(args)
        text = inpainting.report(result)
    elif autoencoder.is_autoencoder(args.checkpoint):          # lesson 09's figures
        args.n = args.n or 10_000
        result = autoencoder.evaluate_autoencoder(
            args.checkpoint, args.n, args.batch, args.raw_weights, args.classifier,
            args.stats_dir, args.reference_images, not args.no_floor)
        text = autoencoder.report(result)
    else:
        args.n = args.n or 10_000
        # progress goes to stderr, so --json output stays clean
        result = model.evaluate(args.checkpoint, args.n, args.sampler, args.steps, args.eta,
                                args.batch, args.seed, args.raw_weights, args.classifier,
                                args.stats_dir, args.reference_images, not args.no_floor,
                                args.bpd_images, args.bpd_samples, args.bpd_full)
        text = model.report(result)
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
