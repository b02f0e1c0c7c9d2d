"""Benchmarks: ``minidiff bench layers`` and ``minidiff bench unet`` time minidiff against
PyTorch in the same process when torch is importable (it is never a dependency)."""
import importlib
import sys

BENCHMARKS = {"layers": "minidiff.bench.layers", "unet": "minidiff.bench.unet"}


def import_torch(threads: int):
    """PyTorch with ``threads`` threads, or None where it is not installed."""
    try:
        import torch  # noqa: PLC0415  (optional comparison only; never a dependency)
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        got = repr(argv[0]) if argv else "nothing"
        print(f"minidiff bench: expected one of {', '.join(BENCHMARKS)}, got {got}",
              file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0
