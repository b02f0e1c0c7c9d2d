"""Benchmarks: ``minidiff bench layers`` and ``minidiff bench unet`` time minidiff against
PyTorch in the same process when torch is importable (it is never a dependency);
``minidiff bench ldm`` sets the pixel model against the latent one."""
import argparse
import importlib
import os
import sys

BENCHMARKS = {"layers": "minidiff.bench.layers", "unet": "minidiff.bench.unet",
              "ldm": "minidiff.bench.ldm"}


def import_torch(threads: int):
    """PyTorch with ``threads`` threads, or None where it is not installed."""
    try:
        import torch  # noqa: PLC0415  (optional comparison only; never a dependency)
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


#: what a benchmark's title says in place of the torch version when torch does not run
NO_TORCH = " (no torch: --no-torch, or not importable)"


def benchmark_parser(prog: str, description: str, repeat_help: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --json, --repeat, --batch, --threads."""
    result = argparse.ArgumentParser(prog=prog, description=description)
    result.add_argument("--json", action="store_true", help="print the results as JSON")
    result.add_argument("--repeat", type=int, default=5, help=repeat_help)
    result.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1))
    result.add_argument("--threads", type=int, default=cpus,
                        help="threads for PyTorch (match NumPy's BLAS)")
    result.add_argument("--no-torch", action="store_true",
                        help="time minidiff alone, even where torch is installed")
    return result


def counts_error(args, prog: str):
    """A one-line complaint when --repeat, --batch or --threads is below 1, else None."""
    if min(args.repeat, args.batch, args.threads) < 1:
        return f"{prog}: --repeat, --batch and --threads must be >= 1"
    return None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        got = repr(argv[0]) if argv else "nothing"
        print(f"minidiff bench: expected one of {', '.join(BENCHMARKS)}, got {got}",
              file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0
