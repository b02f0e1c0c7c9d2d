"""Benchmark: the whole DDPM U-Net, minidiff vs PyTorch (lesson 06-07).

    python -m minidiff.bench.unet [--json] [--batch 64] [--repeat N] [--threads K]
    minidiff bench unet ...

Two timings of the reference configuration (``REFERENCE_CONFIG``, 1,623,169 parameters,
1x28x28, float32, CPU):

* **training step** — Algorithm 1 on a random batch: draw t and eps, x_t by (2.4), forward,
  L_simple (4.6), backward, one AdamW step (and zero_grad);
* **sampling step** — one forward pass under no_grad (what each of the T steps of
  Algorithm 2 costs).

Where ``torch`` imports, the same network is built in PyTorch (``torch_unet.torch_twin``) with
the minidiff weights copied into it; before anything is timed the two outputs are compared and
the benchmark fails unless they agree to 1e-4 (max abs difference).  The frameworks are
interleaved (minidiff, torch, minidiff, torch, ...) after one warm-up step each, so that both
see the same machine load; the table reports the median and the minimum over ``--repeat``
runs, and the ratios minidiff / torch of the medians and of the minima.  The minimum is the
run least disturbed by other work on the machine; on the shared 2-core development machine
NumPy's single-threaded passes slowed down more than torch in busy periods, so the two
ratios can differ by 20% or more.  minidiff and PyTorch both get ``--threads`` threads
(default: minidiff's own count, ``minidiff.backend.threads``: the CPUs visible to this process
unless OPENBLAS_NUM_THREADS or OMP_NUM_THREADS says otherwise).

**Peak memory.**  tracemalloc sees NumPy's buffers but not PyTorch's allocator, so both
frameworks are measured the same way instead: one fresh subprocess per framework imports it,
builds the model, optimizer and batch, resets and records its peak resident set (VmHWM in
/proc/self/status on Linux, ru_maxrss elsewhere), then runs two training steps and reports
how much the peak grew.  That growth is the working memory
of a training step (activations kept for backward, gradients, optimizer state, temporaries),
excluding the interpreter, the libraries and the weights.  The subprocesses run one after the
other, so they do not compete for memory.  (ru_maxrss is not used on Linux: a child
starts with its parent's peak.)
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from minidiff import backend
from minidiff.bench import NO_TORCH, import_torch, timed, torch_device
from minidiff.bench.torch_unet import max_abs_diff, torch_twin
from minidiff.config.build import model_config
from minidiff.config.presets import PRESETS
from minidiff.diffusion import NoiseSchedule, training_step
from minidiff.models import REFERENCE_CONFIG, UNet, UNetConfig
from minidiff.optim import AdamW
from minidiff.tensor import Tensor, no_grad

__all__ = ["run", "TOLERANCE"]

TOLERANCE = 1e-4   # max |minidiff - torch| on the same input and weights


def _config(args) -> UNetConfig:
    if args.preset is not None:   # checked by the command: an unconditional diffusion preset
        return model_config(PRESETS[args.preset])
    if args.base_channels is None and args.image_size is None:
        return REFERENCE_CONFIG
    overrides = {}
    if args.base_channels is not None:
        overrides["base_channels"] = args.base_channels
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
        overrides["attention_resolutions"] = (args.image_size // 4,)
    return UNetConfig.from_dict({**REFERENCE_CONFIG.to_dict(), **overrides})


# ----------------------------------------------------------------------------- the two sides

class _Minidiff:
    def __init__(self, config, batch, schedule):
        self.model = UNet(config)
        self.optimizer = AdamW(self.model.parameters(), lr=1e-4)
        self.schedule = schedule
        size = config.image_size
        # a stand-in batch of images: uniform in [-1, 1], the range training_step accepts
        self.x0 = backend.rand(batch, config.in_channels, size, size, dtype="float32") * 2 - 1
        self.t = backend.randint(0, schedule.num_timesteps, (batch,))

    def train_step(self):
        self.optimizer.zero_grad()
        loss = training_step(self.model, self.schedule, self.x0)
        loss.backward()
        self.optimizer.step()
        return float(loss.data)

    def sample_step(self):
        with no_grad():
            self.model(Tensor(self.x0), self.t)


class _Torch:
    def __init__(self, torch, twin, schedule, x0, t, device="cpu"):
        self.torch, self.model, self.device = torch, twin.to(device), device
        self.optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-4, weight_decay=1e-2)

        def moved(array):
            return torch.from_numpy(backend.to_host(array).copy()).to(device)
        self.sqrt_abar = moved(schedule.sqrt_alphas_cumprod).float()
        self.sqrt_1mabar = moved(schedule.sqrt_one_minus_alphas_cumprod).float()
        self.T = schedule.num_timesteps
        self.x0, self.t = moved(x0), moved(t)

    def train_step(self):
        torch, x0 = self.torch, self.x0
        self.optimizer.zero_grad(set_to_none=True)
        t = torch.randint(0, self.T, (x0.shape[0],), device=self.device)
        noise = torch.randn_like(x0)
        x_t = self.sqrt_abar[t][:, None, None, None] * x0 + \
            self.sqrt_1mabar[t][:, None, None, None] * noise
        loss = torch.nn.functional.mse_loss(self.model(x_t, t), noise)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def sample_step(self):
        with self.torch.no_grad():
            self.model(self.x0, self.t)


# ----------------------------------------------------------------------------- memory probe

def _peak_rss_bytes(reset: bool = False) -> tuple:
    """(peak resident set in bytes, source).  On Linux the peak of *this* address space,
    VmHWM in /proc/self/status, optionally reset to the current RSS first (clear_refs 5).
    Elsewhere ru_maxrss, which on Linux would also include the parent's RSS at fork time."""
    try:
        if reset:
            try:
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
            except OSError:
                pass
        with open("/proc/self/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return int(fields["VmHWM"].split()[0]) * 1024, "VmHWM"
    except (OSError, KeyError, ValueError):
        import resource  # noqa: PLC0415  (POSIX only; the parent handles its absence)
        scale = 1 if sys.platform == "darwin" else 1024   # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "ru_maxrss"


def _probe(args) -> dict:
    """Run in a fresh subprocess: peak RSS growth (bytes) over two training steps."""
    backend.manual_seed(0)
    schedule = NoiseSchedule.linear(1000)
    side = _Minidiff(_config(args), args.batch, schedule)
    if args.probe == "torch":
        torch = import_torch(args.threads)
        side = _Torch(torch, torch_twin(side.model), schedule, side.x0, side.t)
    base, source = _peak_rss_bytes(reset=True)
    for _ in range(2):
        side.train_step()
    peak, _ = _peak_rss_bytes()
    return {"peak_growth_bytes": max(peak - base, 0), "baseline_bytes": base, "source": source}


def _measure_memory(args, framework) -> dict | None:
    command = [sys.executable, "-m", "minidiff.commands.bench", "unet", "--probe", framework,
               "--batch", str(args.batch), "--threads", str(args.threads)]
    if args.preset is not None:
        command += ["--preset", args.preset]
    if args.base_channels is not None:
        command += ["--base-channels", str(args.base_channels)]
    if args.image_size is not None:
        command += ["--image-size", str(args.image_size)]
    env = dict(os.environ, MINIDIFF_BACKEND="numpy")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the benchmark

def _stats(seconds) -> dict:
    return {"median_ms": 1e3 * statistics.median(seconds), "min_ms": 1e3 * min(seconds)}


def run(args) -> dict:
    """Time both steps (and measure memory unless ``args.no_memory``); returns a dict."""
    torch = None if args.no_torch else import_torch(args.threads)
    device = torch_device(torch)
    backend.manual_seed(0)
    config = _config(args)
    schedule = NoiseSchedule.linear(1000)
    ours = _Minidiff(config, args.batch, schedule)
    theirs, agreement = None, None
    if torch is not None:
        twin = torch_twin(ours.model)
        n = min(args.batch, 8)
        agreement = max_abs_diff(ours.model, twin, backend.to_host(ours.x0[:n]),
                                 backend.to_host(ours.t[:n]))
        if not agreement <= TOLERANCE:
            raise AssertionError(f"minidiff and torch U-Nets disagree: max |diff| = "
                                 f"{agreement:.3g} > {TOLERANCE}")
        theirs = _Torch(torch, twin, schedule, ours.x0, ours.t, device)  # agreement: on the CPU
    sides = [("minidiff", ours)] + ([("torch", theirs)] if theirs else [])
    times = {name: {"train": [], "sample": []} for name, _ in sides}
    for name, side in sides:    # warm-up: first calls allocate pools, caches, optimizer state
        timed(side.train_step, torch, device if name == "torch" else "cpu")
        timed(side.sample_step, torch, device if name == "torch" else "cpu")
    for _ in range(args.repeat):
        for name, side in sides:
            times[name]["train"].append(
                timed(side.train_step, torch, device if name == "torch" else "cpu"))
        for name, side in sides:
            times[name]["sample"].append(
                timed(side.sample_step, torch, device if name == "torch" else "cpu"))
    result = {
        "config": config.to_dict(), "preset": args.preset,
        "parameters": ours.model.num_parameters(),
        "batch": args.batch, "repeat": args.repeat, "threads": args.threads,
        "cpus": os.cpu_count(), "torch": torch.__version__ if torch else None,
        "backend": backend.get_backend(), "torch_device": device,
        "max_abs_diff": agreement, "tolerance": TOLERANCE,
        "minidiff": {"train_step": _stats(times["minidiff"]["train"]),
                     "sample_step": _stats(times["minidiff"]["sample"])},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if theirs:
        result["torch_times"] = {"train_step": _stats(times["torch"]["train"]),
                                 "sample_step": _stats(times["torch"]["sample"])}
        result["ratio"] = {key: result["minidiff"][key]["median_ms"] /
                           result["torch_times"][key]["median_ms"]
                           for key in ("train_step", "sample_step")}
        result["ratio_of_minima"] = {key: result["minidiff"][key]["min_ms"] /
                                     result["torch_times"][key]["min_ms"]
                                     for key in ("train_step", "sample_step")}
    # the peak-memory probe measures host RSS on NumPy: meaningless for arrays on a GPU
    if not args.no_memory and not backend.is_device_backend():
        mem = _measure_memory(args, "minidiff")
        result["minidiff"]["peak_memory_mb"] = mem and mem["peak_growth_bytes"] / 2 ** 20
        if theirs:
            mem_t = _measure_memory(args, "torch")
            result["torch_times"]["peak_memory_mb"] = mem_t and mem_t["peak_growth_bytes"] / 2**20
            if mem and mem_t and mem_t["peak_growth_bytes"] > 0:
                result["ratio"]["peak_memory"] = mem["peak_growth_bytes"] / \
                    mem_t["peak_growth_bytes"]
    return result


def _print_table(r) -> None:
    has_torch = r["torch"] is not None
    name = f"the {r['preset']} preset's U-Net" if r.get("preset") else "U-Net"
    print(f"{name} ({r['parameters']:,} parameters), batch {r['batch']}, float32, "
          f"{r['threads']} threads, median/min of {r['repeat']} after a warm-up "
          "(ratios: of the medians / of the minima)"
          + f", backend {r['backend']}"
          + (f", torch {r['torch']} on {r['torch_device']}" if has_torch else NO_TORCH))
    if has_torch:
        print(f"outputs agree: max |minidiff - torch| = {r['max_abs_diff']:.2e} "
              f"(tolerance {r['tolerance']:.0e})")
    head = f"{'':22s} {'minidiff':>18s}" + (f" {'torch':>18s} {'ratio':>15s}" if has_torch
                                             else "")
    print(head)
    print("-" * len(head))
    for key, label in (("train_step", "training step (ms)"), ("sample_step", "sampling step (ms)")):
        m = r["minidiff"][key]
        line = f"{label:22s} {m['median_ms']:9.1f} /{m['min_ms']:7.1f}"
        if has_torch:
            t = r["torch_times"][key]
            line += (f" {t['median_ms']:9.1f} /{t['min_ms']:7.1f} {r['ratio'][key]:7.2f} /"
                     f"{r['ratio_of_minima'][key]:6.2f}")
        print(line)
    if "peak_memory_mb" in r["minidiff"]:
        m = r["minidiff"]["peak_memory_mb"]
        line = f"{'peak RSS growth (MiB)':22s} {m if m is None else round(m, 1)!s:>18s}"
        if has_torch:
            t = r["torch_times"].get("peak_memory_mb")
            ratio = r["ratio"].get("peak_memory")
            line += f" {t if t is None else round(t, 1)!s:>18s} " \
                    f"{'' if ratio is None else f'{ratio:7.2f}'}"
        print(line)
    if r.get("load_average"):
        print(f"load average {r['load_average'][0]:.2f} on {r['cpus']} CPUs "
              "(other processes on the machine slow both frameworks)")
