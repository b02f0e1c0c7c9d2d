import argparse
import json
import sys

from minidiff.backend import threads
from minidiff.bench import emit, layers as bench_layers, ldm as bench_ldm, unet as bench_unet
from minidiff.commands._args import ArgumentParser, command, int_arg
from minidiff.config.presets import PRESETS
from minidiff.data.paths import resolve_user_path
from minidiff.errors import MinidiffInputError, one_line
BENCHMARKS = ("layers", "unet", "ldm")
#: the presets whose network is a plain U-Net, which ``bench unet --preset`` can time
UNET_PRESETS = tuple(name for name, config in PRESETS.items()
                     if config["model"] == "unet" and config["conditioning"] == "none")


USAGE = ("usage: minidiff bench {layers,unet,ldm} [options]\n\n"
         "  layers   time each layer's forward and backward, minidiff vs torch\n"
         "  unet     time a U-Net training and sampling step, minidiff vs torch\n"
         "  ldm      the pixel quick model against the latent one: cost per image, memory, "
         "quality\n\n"
         "'minidiff bench NAME --help' lists the options of each.")


def benchmark_parser(prog: str, description: str, repeat_help: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --json, --repeat, --batch, --threads."""
    result = ArgumentParser(prog=prog, description=description)
    result.add_argument("--json", action="store_true", help="print the results as JSON")
    result.add_argument("--repeat", type=int_arg(1), default=5, help=repeat_help)
    result.add_argument("--batch", type=int_arg(1), default=64, help="batch size (default 64)")
    result.add_argument("--threads", type=int_arg(1), default=threads.threads(),
                        help="threads for minidiff and for PyTorch (default: minidiff's, "
                             f"{threads.threads()} here; see minidiff.backend.threads)")
    result.add_argument("--no-torch", action="store_true",
                        help="time minidiff alone, even where torch is installed")
    return result


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--help"], ["-h"]):
        print(USAGE)
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        got = repr(argv[0]) if argv else "nothing"
        print(f"minidiff bench: expected one of {', '.join(BENCHMARKS)}, got {got}",
              file=sys.stderr)
        return 2
    run = {"layers": layers_main, "unet": unet_main, "ldm": ldm_main}[argv[0]]
    return run(argv[1:]) or 0


def layers_main(argv=None) -> int:
    args = benchmark_parser("minidiff bench layers", bench_layers.__doc__.split("\n")[0],
                            "timed repeats per op (min taken)").parse_args(argv)
    with threads.using(args.threads):   # minidiff gets as many threads as torch
        result = bench_layers.run(args)
    return emit(result, args.json, bench_layers._print_table)


def _unet_parser():
    parser = benchmark_parser("minidiff bench unet", bench_unet.__doc__.split("\n")[0],
                              "timed repeats (default 5)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--preset", default=None,
                        help="the network of an unconditional diffusion preset ("
                             + ", ".join(UNET_PRESETS) + ") instead of the reference U-Net")
    parser.add_argument("--base-channels", type=int_arg(8), default=None,
                        help="a smaller network than the reference (tests); a multiple of 8, "
                             "the GroupNorm groups")
    parser.add_argument("--image-size", type=int_arg(4), default=None,
                        help="another image size, a multiple of 4 (attention at size / 4)")
    parser.add_argument("--probe", choices=("minidiff", "torch"), help=argparse.SUPPRESS)
    return parser


@command
def unet_main(argv=None) -> int:
    args = _unet_parser().parse_args(argv)
    if args.preset is not None and args.preset not in UNET_PRESETS:
        raise MinidiffInputError(f"--preset: expected an unconditional diffusion preset "
                                 f"({', '.join(UNET_PRESETS)}), got {args.preset!r}")
    if args.preset is not None and (args.base_channels, args.image_size) != (None, None):
        raise MinidiffInputError("--preset: names the whole network; give it without "
                                 "--base-channels or --image-size")
    if args.base_channels is not None and args.base_channels % 8:
        raise MinidiffInputError(f"--base-channels: expected a multiple of 8 (the GroupNorm "
                                 f"groups), got {args.base_channels}")
    if args.image_size is not None and args.image_size % 4:
        raise MinidiffInputError(f"--image-size: expected a multiple of 4 (two Downsamples, "
                                 f"attention at size / 4), got {args.image_size}")
    try:
        with threads.using(args.threads):   # minidiff gets as many threads as torch
            if args.probe:
                print(json.dumps(bench_unet._probe(args)))
                return 0
            result = bench_unet.run(args)
    except AssertionError as error:
        print(f"minidiff bench unet: {error}", file=sys.stderr)
        return 1
    return emit(result, args.json, bench_unet._print_table)


def _ldm_parser():
    parser = benchmark_parser("minidiff bench ldm", bench_ldm.__doc__.split("\n")[0],
                              "timed repeats (default 3)")
    parser.set_defaults(repeat=3)
    parser.add_argument("--sample-batch", type=int_arg(1), default=32,
                        help="images per timed DDIM run (default 32)")
    parser.add_argument("--pixel", default=bench_ldm.DEFAULTS["pixel"], help="the pixel model's checkpoint")
    parser.add_argument("--ldm", default=bench_ldm.DEFAULTS["ldm"], help="the latent model's checkpoint")
    parser.add_argument("--autoencoder", default=None,
                        help="the LDM's autoencoder, if not at the path it recorded")
    parser.add_argument("--figures", default=bench_ldm.FIGURES,
                        help=f"quality record of the shipped models (default {bench_ldm.FIGURES})")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--probe", choices=("pixel", "ldm", "config"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-spec", help=argparse.SUPPRESS)
    return parser


def ldm_main(argv=None) -> int:
    args = _ldm_parser().parse_args(argv)
    try:
        # the shipped models and their quality record, found from any folder (data.paths)
        for option in ("pixel", "ldm", "figures"):
            setattr(args, option, resolve_user_path(getattr(args, option), f"--{option}"))
        if args.autoencoder:
            args.autoencoder = resolve_user_path(args.autoencoder, "--autoencoder")
        with threads.using(args.threads):   # minidiff gets as many threads as torch
            if args.probe:
                print(json.dumps(bench_ldm._probe(args)))
                return 0
            result = bench_ldm.run(args)
    except MinidiffInputError as error:      # CheckpointError, SpaceError, DataNotFoundError
        print(f"minidiff bench ldm: {one_line(error)}", file=sys.stderr)
        return 2
    except AssertionError as error:
        print(f"minidiff bench ldm: {error}", file=sys.stderr)
        return 1
    return emit(result, args.json, bench_ldm._print_table)


if __name__ == "__main__":
    sys.exit(main())
