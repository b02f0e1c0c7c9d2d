"""Benchmarks: ``minidiff bench layers`` and ``minidiff bench unet`` time minidiff against
PyTorch in the same process when torch is importable (it is never a dependency);
``minidiff bench ldm`` sets the pixel model against the latent one."""
import json
import time

from minidiff import backend


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


def emit(result: dict, as_json: bool, print_table) -> int:
    """Print a benchmark's ``result``, as JSON or through its ``print_table``; exit status 0."""
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


