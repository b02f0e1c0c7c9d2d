"""Benchmarks: ``minidiff bench layers`` and ``minidiff bench unet`` time minidiff against
PyTorch in the same process when torch is importable (it is never a dependency);
``minidiff bench ldm`` sets the pixel model against the latent one."""
import argparse
import importlib
import json
import os
import sys
import time

from minidiff import backend
from minidiff.validation import ArgumentParser, int_arg

BENCHMARKS = {"layers": "minidiff.bench.layers", "unet": "minidiff.bench.unet",
              "ldm": "minidiff.bench.ldm"}
USAGE = ("usage: minidiff bench {layers,unet,ldm} [options]\n\n"
         "  layers   time each layer's forward and backward, minidiff vs torch\n"
         "  unet     time a U-Net training and sampling step, minidiff vs torch\n"
         "  ldm      the pixel quick model against the latent one: cost per image, memory, "
         "quality\n\n"
         "'minidiff bench NAME --help' lists the options of each.")


def import_torch(threads: int):
    """PyTorch with ``threads`` threads, or None where it is not installed."""
    try:
        import torch  # noqa: PLC0415  (optional comparison only; never a dependency)
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def torch_device(torch) -> str:
    """Where the torch side runs: "cuda" when minidiff runs on CuPy and torch sees a GPU (the
    same kind of device for both), else "cpu".  On "cuda", torch's TF32 shortcuts for float32
    convolutions and matmuls are switched off: CuPy computes them in full float32 (unless
    CUPY_TF32=1), and the comparison must be float32 against float32."""
    if torch is not None and backend.get_backend() == "cupy" and torch.cuda.is_available():
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        return "cuda"
    return "cpu"


def timed(fn, torch=None, device: str = "cpu") -> float:
    """Seconds that ``fn()`` takes, waiting for the GPU work it queued (CuPy's and, on
    "cuda", torch's) before the clock stops: both launch kernels asynchronously."""
    start = time.perf_counter()
    fn()
    backend.synchronize()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


#: what a benchmark's title says in place of the torch version when torch does not run
NO_TORCH = " (no torch: --no-torch, or not importable)"


def benchmark_parser(prog: str, description: str, repeat_help: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --json, --repeat, --batch, --threads."""
    result = ArgumentParser(prog=prog, description=description)
    result.add_argument("--json", action="store_true", help="print the results as JSON")
    result.add_argument("--repeat", type=int_arg(1), default=5, help=repeat_help)
    result.add_argument("--batch", type=int_arg(1), default=64, help="batch size (default 64)")
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1))
    result.add_argument("--threads", type=int_arg(1), default=cpus,
                        help="threads for PyTorch (match NumPy's BLAS)")
    result.add_argument("--no-torch", action="store_true",
                        help="time minidiff alone, even where torch is installed")
    return result


def emit(result: dict, as_json: bool, print_table) -> int:
    """Print a benchmark's ``result``, as JSON or through its ``print_table``; exit status 0."""
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


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
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0
