"""Benchmark: the pixel ``quick`` U-Net against the latent diffusion model's (lesson 10).

    minidiff bench ldm [--json] [--batch 64] [--sample-batch 32] [--repeat 3] [--no-torch]
                       [--pixel data/checkpoints/quick.npz] [--ldm data/checkpoints/ldm.npz]

In one process, on the same machine load, for each model as shipped (weights and config
from its checkpoint, the LDM with the autoencoder it records):

* **training step per image**: Algorithm 1 on a batch of ``--batch`` x_0 of the model's
  space (28x28 pixels, or c x 7 x 7 latents): draw t and eps, x_t (2.4), forward, L_simple
  (4.6), backward, AdamW; divided by the batch.  The LDM's data are encoded once before
  training (``minidiff.data.spaces``), so the encoder is not part of its step;
* **sampling time per image**: DDIM with 50 steps on ``--sample-batch`` images, the decoder
  D(z / s) included for the LDM (its share is printed too), divided by the batch;
* **peak memory**: the growth of the peak resident set over two training steps, each model
  in a fresh subprocess (as ``bench unet`` measures it);
* the ratios pixel / latent of all three.

The two models are timed alternately (pixel, latent, pixel, ...) after a warm-up, and the
table gives the median and the minimum of ``--repeat`` runs.  Beside the costs, the quality
of each shipped model is *read* from ``data/checkpoints/figures.json`` (what ``minidiff
eval`` measured for it, with its n), not recomputed here.  Where torch imports, the latent
U-Net is also timed against its PyTorch twin (``torch_unet.torch_twin``, outputs compared
first), as ``bench unet`` does for the reference U-Net: at 7x7 the fixed cost of each
operation, not the GEMMs, may dominate.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from minidiff import backend
from minidiff.bench import NO_TORCH, import_torch
from minidiff.bench.torch_unet import max_abs_diff, torch_twin
from minidiff.bench.unet import TOLERANCE, _Minidiff, _Torch, _peak_rss_bytes
from minidiff.config.build import build_model, model_config, schedule_from_config
from minidiff.data.captions import Tokenizer
from minidiff.data.spaces import LatentSpace, PixelSpace
from minidiff.diffusion import as_eps_model, ddim_sample, training_step
from minidiff.models.autoencoder import AutoencoderConfig, AutoencoderKL
from minidiff.models.unet import UNet
from minidiff.nn import Module
from minidiff.optim import AdamW
from minidiff.pipelines.conditions import sampling_cond
from minidiff.pipelines.load import load_pipeline
from minidiff.tensor import Tensor

__all__ = ["run", "Side", "FixedInputs", "FixedCondition", "time_sides",
           "peak_growth", "config_memory", "FIGURES"]

FIGURES = os.path.join("data", "checkpoints", "figures.json")
DEFAULTS = {"pixel": os.path.join("data", "checkpoints", "quick.npz"),
            "ldm": os.path.join("data", "checkpoints", "ldm.npz")}
SAMPLING_STEPS = 50


class Side:
    """One model: its U-Net (a trainable copy), space, schedule and optimizer.  Built from a
    shipped checkpoint (``from_checkpoint``, what this benchmark times) or from parts (lesson
    12 times untrained models of the presets' shapes, conditional ones included)."""

    def __init__(self, model, config: dict, space, batch: int, label: str):
        self.model, self.config, self.space = model, config, space
        self.schedule = schedule_from_config(config)
        self.prediction = config["prediction"]
        self.eps_model = as_eps_model(model, self.schedule, self.prediction)
        self.optimizer = AdamW(model.parameters(), lr=1e-4)
        self.x0 = backend.randn(batch, *space.shape, dtype="float32")
        self.path = label

    @classmethod
    def from_checkpoint(cls, path: str, batch: int, autoencoder: str | None = None):
        pipeline = load_pipeline(path, autoencoder=autoencoder)
        return cls(pipeline.model, pipeline.config, pipeline.space, batch, path)

    @classmethod
    def from_config(cls, config: dict, space, batch: int, label: str = "",
                    context_dim: int | None = None, concat_channels: int = 0):
        """An untrained U-Net of ``config``'s shape (the cost does not depend on the
        weights), optionally conditioned: cross-attention to ``CONTEXT_LENGTH`` embeddings
        of width ``context_dim``, or ``concat_channels`` extra input channels (both fixed
        random inputs: ``FixedInputs``)."""
        unet_config = model_config(config)
        unet_config.context_dim, unet_config.concat_channels = context_dim, concat_channels
        unet = UNet(unet_config)
        model = FixedInputs(unet) if context_dim or concat_channels else unet
        return cls(model, config, space, batch, label)

    @classmethod
    def from_conditioned_config(cls, config: dict, space, batch: int, label: str = "",
                                prompt: str = "a thick seven"):
        """The network ``config.build.build_model`` makes for ``config`` (text
        encoder included), untrained, fed one fixed condition (``FixedCondition``): ``prompt``
        for text, an all-masked image for concatenation, as ``sampling_cond`` builds them."""
        model = build_model(config)
        cond, _ = sampling_cond(config, 1, prompts=[prompt], space=space,
                                tokenizer=Tokenizer(config["max_tokens"]))
        return cls(FixedCondition(model, cond), config, space, batch, label)

    def train_step(self):
        self.model.train()
        self.optimizer.zero_grad()
        loss = training_step(self.model, self.schedule, self.x0, target_type=self.prediction,
                             x0_range=None)
        loss.backward()
        self.optimizer.step()

    def sample(self, n: int, steps: int = SAMPLING_STEPS) -> float:
        """Seconds spent in the decoder; draws ``n`` images with DDIM (``steps`` steps)."""
        self.model.eval()
        z = ddim_sample(self.eps_model, self.schedule, (n, *self.space.shape),
                        steps=min(steps, self.schedule.num_timesteps),
                        clip_x0=self.space.clip_x0)
        start = time.perf_counter()
        self.space.decode(z)
        return time.perf_counter() - start


#: tokens in the stand-in context of a cross-attending U-Net (the ``max_tokens`` of a prompt)
CONTEXT_LENGTH = 8


class FixedInputs(Module):
    """A conditioned U-Net called as the samplers and ``training_step`` call a model,
    ``model(x_t, t)``: with a fixed random context of ``CONTEXT_LENGTH`` embeddings in place
    of tau_theta(y) (the text encoder is not part of it), and fixed random extra input
    channels in place of a mask and a masked image."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        c = unet.config
        self.context = (backend.randn(1, CONTEXT_LENGTH, c.context_dim, dtype="float32")
                        if c.context_dim else None)
        self.concat = (backend.randn(1, c.concat_channels, c.image_size, c.image_size,
                                     dtype="float32") if c.concat_channels else None)

    def forward(self, x, t):
        xp = backend.xp()
        fixed = {name: None if value is None else Tensor(xp.repeat(value, x.shape[0], axis=0))
                 for name, value in (("context", self.context), ("concat", self.concat))}
        return self.unet(x, t, **fixed)


class FixedCondition(Module):
    """A ``ConditionedUNet`` (``minidiff.models.conditioned``) called as ``model(x_t, t)``, with the
    one-row condition ``cond`` repeated for every image of the batch."""

    def __init__(self, model, cond: dict):
        super().__init__()
        self.model, self.cond = model, cond

    def forward(self, x, t):
        xp = backend.xp()
        return self.model(x, t, {key: xp.repeat(value, x.shape[0], axis=0)
                                 for key, value in self.cond.items()})


def _stats(seconds, per: int) -> dict:
    return {"median_ms": 1e3 * statistics.median(seconds) / per,
            "min_ms": 1e3 * min(seconds) / per}


def _timed(fn):
    """``(seconds, fn())``, the GPU's queued work (CuPy) finished before the clock stops."""
    start = time.perf_counter()
    value = fn()
    backend.synchronize()
    return time.perf_counter() - start, value


def time_sides(sides: dict, repeat: int, sample_batch: int,
               steps: int = SAMPLING_STEPS) -> dict:
    """``{name: {"train": [s, ...], "sample": [...], "decode": [...]}}``: seconds of one
    training step on the side's batch, of drawing ``sample_batch`` images with DDIM in
    ``steps`` steps (decoder included) and of the decoder alone, ``repeat`` times each.  The
    sides take turns (a, b, a, b, ...) after a warm-up, so a change in the machine's load
    touches them all alike."""
    times = {name: {"train": [], "sample": [], "decode": []} for name in sides}
    for side in sides.values():       # warm-up: pools, caches, optimizer state
        side.train_step()
        side.sample(min(sample_batch, 4), steps)
    for _ in range(repeat):
        for name, side in sides.items():
            times[name]["train"].append(_timed(side.train_step)[0])
        for name, side in sides.items():
            seconds, decoding = _timed(lambda s=side: s.sample(sample_batch, steps))
            times[name]["sample"].append(seconds)
            times[name]["decode"].append(decoding)
    return times


def peak_growth(step, times: int = 2) -> tuple:
    """``(bytes, source)``: how far the peak resident set rises above the current one while
    ``step()`` runs ``times`` times.  In a fresh process (``--probe``) that is the step's
    working memory; in a process that already freed other arrays, the allocator may reuse
    them, so it can read lower."""
    base, source = _peak_rss_bytes(reset=True)
    for _ in range(times):
        step()
    peak, _ = _peak_rss_bytes()
    return max(peak - base, 0), source


def _probe(args) -> dict:
    """Run in a fresh subprocess: peak RSS growth over two training steps of one model, a
    shipped one (``--probe pixel|ldm``) or one built by ``Side.from_config`` (``--probe
    config`` with ``--probe-spec`` '{"config": ..., "context_dim": ..., "concat_channels":
    ...}'; the training step needs only x_0's shape, so a latent config gets a stand-in
    space of that shape, not its autoencoder)."""
    backend.manual_seed(0)
    if args.probe == "config":
        spec = json.loads(args.probe_spec)
        config = spec["config"]
        if spec.get("autoencoder"):      # a ConditionedUNet's concat input is E(masked image)
            space = LatentSpace(AutoencoderKL(AutoencoderConfig.from_dict(spec["autoencoder"])),
                                1.0)
        else:
            space = PixelSpace(config["image_size"], config["in_channels"])
        if spec.get("conditioned"):
            side = Side.from_conditioned_config(config, space, args.batch, "probe")
        else:
            side = Side.from_config(config, space, args.batch, "probe", spec.get("context_dim"),
                                    spec.get("concat_channels", 0))
    else:
        side = Side.from_checkpoint(args.pixel if args.probe == "pixel" else args.ldm,
                                    args.batch, args.autoencoder)
    growth, source = peak_growth(side.train_step)
    return {"peak_growth_bytes": growth, "source": source}


def _probe_memory(probe_args: list):
    """MiB that ``--probe ...`` measured in a fresh NumPy process, or None if it failed."""
    command = [sys.executable, "-m", "minidiff.commands.bench", "ldm", *probe_args]
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, MINIDIFF_BACKEND="numpy", PYTHONPATH=path))
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_growth_bytes"] / 2 ** 20


def _measure_memory(args, which: str):
    command = ["--probe", which, "--batch", str(args.batch), "--pixel", args.pixel,
               "--ldm", args.ldm]
    if args.autoencoder:
        command += ["--autoencoder", args.autoencoder]
    return _probe_memory(command)


def config_memory(config: dict, batch: int, context_dim: int | None = None,
                  concat_channels: int = 0, conditioned: bool = False,
                  autoencoder: dict | None = None):
    """MiB of peak RSS growth over two training steps of ``Side.from_config(...)`` (or, with
    ``conditioned``, ``Side.from_conditioned_config``, its latent space an untrained
    autoencoder of the config dict ``autoencoder``), in a fresh process (so memory freed by
    earlier work here cannot hide it), or None."""
    spec = {"config": config, "context_dim": context_dim, "concat_channels": concat_channels,
            "conditioned": conditioned, "autoencoder": autoencoder}
    return _probe_memory(["--probe", "config", "--probe-spec", json.dumps(spec),
                          "--batch", str(batch)])


def _quality(figures_path: str, path: str):
    """What ``figures.json`` records for the checkpoint file named like ``path``."""
    try:
        with open(figures_path, encoding="utf-8") as stream:
            figures = json.load(stream)
    except (OSError, json.JSONDecodeError):
        return None
    return figures.get(os.path.basename(path))


def _versus_torch(side, args, torch) -> dict:
    """The latent U-Net against its PyTorch twin: training and sampling step, batch --batch."""
    backend.manual_seed(0)
    ours = _Minidiff(side.model.config, args.batch, side.schedule)
    twin = torch_twin(ours.model)
    n = min(args.batch, 8)
    agreement = max_abs_diff(ours.model, twin, backend.to_host(ours.x0[:n]),
                             backend.to_host(ours.t[:n]))
    if not agreement <= TOLERANCE:
        raise AssertionError(f"minidiff and torch latent U-Nets disagree: max |diff| = "
                             f"{agreement:.3g} > {TOLERANCE}")
    theirs = _Torch(torch, twin, side.schedule, ours.x0, ours.t)
    sides = (("minidiff", ours), ("torch", theirs))
    times = {name: {"train_step": [], "sample_step": []} for name, _ in sides}
    for _, s in sides:
        s.train_step()
        s.sample_step()
    for _ in range(max(args.repeat, 3)):
        for name, s in sides:
            times[name]["train_step"].append(_timed(s.train_step)[0])
            times[name]["sample_step"].append(_timed(s.sample_step)[0])
    result = {"torch": torch.__version__, "max_abs_diff": agreement, "tolerance": TOLERANCE,
              "batch": args.batch}
    for name, _ in sides:
        result[name] = {key: _stats(v, 1) for key, v in times[name].items()}
    result["ratio"] = {key: result["minidiff"][key]["median_ms"] /
                       result["torch"][key]["median_ms"] for key in times["torch"]}
    return result


def run(args) -> dict:
    """Every figure of the benchmark as a dict (see the module docstring)."""
    backend.manual_seed(0)
    sides = {"pixel": Side.from_checkpoint(args.pixel, args.batch),
             "latent": Side.from_checkpoint(args.ldm, args.batch, args.autoencoder)}
    times = time_sides(sides, args.repeat, args.sample_batch)
    result = {"batch": args.batch, "sample_batch": args.sample_batch, "repeat": args.repeat,
              "sampler": f"DDIM, {SAMPLING_STEPS} steps, eta 0", "cpus": os.cpu_count(),
              "backend": backend.get_backend(),
              "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    for name, side in sides.items():
        result[name] = {
            "checkpoint": side.path, "space": side.space.describe(),
            "parameters": side.model.num_parameters(),
            "x0_shape": list(side.space.shape),
            "train_ms_per_image": _stats(times[name]["train"], args.batch),
            "sample_ms_per_image": _stats(times[name]["sample"], args.sample_batch),
            "decode_ms_per_image": _stats(times[name]["decode"], args.sample_batch),
            "quality": _quality(args.figures, side.path)}
    if not args.no_memory:
        for name, which in (("pixel", "pixel"), ("latent", "ldm")):
            result[name]["peak_memory_mb"] = _measure_memory(args, which)
    pixel, latent = result["pixel"], result["latent"]
    result["ratio_pixel_over_latent"] = {
        key: pixel[key]["median_ms"] / latent[key]["median_ms"]
        for key in ("train_ms_per_image", "sample_ms_per_image")}
    result["ratio_of_minima"] = {key: pixel[key]["min_ms"] / latent[key]["min_ms"]
                                 for key in ("train_ms_per_image", "sample_ms_per_image")}
    if pixel.get("peak_memory_mb") and latent.get("peak_memory_mb"):
        result["ratio_pixel_over_latent"]["peak_memory"] = (pixel["peak_memory_mb"] /
                                                           latent["peak_memory_mb"])
    torch = None if args.no_torch else import_torch(args.threads)
    result["torch"] = _versus_torch(sides["latent"], args, torch) if torch else None
    return result


def _quality_text(q) -> str:
    if not q:
        return "(no record in figures.json)"
    return (f"FID {q['fid']:.1f} (n = {q['n']:,}, {q['sampler']} {q['steps']} steps), "
            f"confidence {q['mean_confidence']:.3f}")


def _print_table(r) -> None:
    p, z = r["pixel"], r["latent"]
    print(f"pixel {p['space']}: {p['checkpoint']}, {p['parameters']:,} parameters")
    print(f"latent {z['space']}: {z['checkpoint']}, {z['parameters']:,} parameters")
    print(f"training batch {r['batch']}, sampling {r['sampler']} on {r['sample_batch']} images, "
          f"median / min of {r['repeat']} alternating runs, float32, {r['backend']}")
    head = f"{'per image':28s} {'pixel':>17s} {'latent':>17s} {'pixel / latent':>16s}"
    print(head)
    print("-" * len(head))
    ratio, minima = r["ratio_pixel_over_latent"], r["ratio_of_minima"]
    for key, label in (("train_ms_per_image", "training step (ms)"),
                       ("sample_ms_per_image", "sampling, decoder incl. (ms)")):
        print(f"{label:28s} {p[key]['median_ms']:8.2f} /{p[key]['min_ms']:7.2f} "
              f"{z[key]['median_ms']:8.2f} /{z[key]['min_ms']:7.2f} "
              f"{ratio[key]:8.1f} /{minima[key]:6.1f}")
    decoder = z["decode_ms_per_image"]["median_ms"]
    print(f"{'  of which the decoder (ms)':28s} {'':17s} {decoder:8.2f}")
    if "peak_memory_mb" in p:
        pm, zm = p["peak_memory_mb"], z["peak_memory_mb"]
        ratio_text = f"{ratio['peak_memory']:8.1f}" if "peak_memory" in ratio else ""
        print(f"{'peak RSS growth, train (MiB)':28s} "
              f"{'-' if pm is None else f'{pm:.1f}':>17s} "
              f"{'-' if zm is None else f'{zm:.1f}':>17s} {ratio_text:>8s}")
    print(f"quality, pixel:  {_quality_text(p['quality'])}")
    print(f"quality, latent: {_quality_text(z['quality'])}")
    print("(quality as recorded in figures.json by minidiff eval; MNIST-classifier FID)")
    t = r["torch"]
    if t:
        print(f"latent U-Net vs torch {t['torch']} (batch {t['batch']}, max |diff| "
              f"{t['max_abs_diff']:.1e}), median ms, minidiff vs torch:")
        for key, label in (("train_step", "training step"), ("sample_step", "sampling step")):
            print(f"  {label:14s} {t['minidiff'][key]['median_ms']:8.1f} vs "
                  f"{t['torch'][key]['median_ms']:8.1f} ms  ({t['ratio'][key]:.2f}x)")
    else:
        print("latent U-Net vs torch:" + NO_TORCH)
    if r.get("load_average"):
        print(f"load average {r['load_average'][0]:.2f} on {r['cpus']} CPUs (other work on "
              "the machine slows both models; the ratios suffer less than the times)")
