"""Training checkpoints: everything needed to continue a run exactly, in one ``.npz`` file.

Layout (flat names, arrays only, so it loads with ``allow_pickle=False``):

    model.<param>   the trained weights            ema.<param>   their moving average
    optim.<key>     AdamW's step, lr and moments   sched.<key>   the lr schedule position
    rng             the generator's state (JSON)   config        the training config (JSON)
    step            optimizer steps done           history.loss  one loss per step so far

Strings are stored as 0-d unicode arrays (NumPy's ``str_``), which need no pickling.  The
file is written atomically (``backend.save_npz``), so Ctrl-C or a crash mid-write leaves the
previous checkpoint intact.  An *export* (``ema_only=True``) keeps just the EMA weights and
the config: what sampling needs, a quarter of the size.

The config's ``model`` says what was trained: ``"unet"`` (a diffusion model; checkpoints
written before the key existed are U-Nets) or ``"autoencoder"`` (lesson 09), whose files also
hold ``scale_factor``, the measured latent scale (float64 scalar), in the export too.
"""
from __future__ import annotations

import json
import os

from minidiff import backend
from minidiff.validation import MinidiffInputError

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "group",
           "model_from_checkpoint", "schedule_from_config", "eps_model_from_checkpoint",
           "autoencoder_from_checkpoint"]


class CheckpointError(MinidiffInputError):
    """A file that is missing or is not a minidiff training checkpoint."""


def _text(value: str):
    return backend.host.asarray(str(value))


def save_checkpoint(path, *, model, ema, config: dict, step: int, optimizer=None,
                    scheduler=None, history=(), ema_only: bool = False,
                    extra: dict | None = None) -> None:
    """Write one checkpoint file (see the module docstring for what goes in); ``extra``:
    more named arrays (a latent model's ``autoencoder.sha256``), kept in exports too."""
    host = backend.host
    arrays = {f"ema.{k}": v for k, v in zip(model.state_dict(), ema.shadow)}
    arrays.update({"config": _text(json.dumps(config, sort_keys=True)),
                   "step": host.asarray(step, dtype=host.int64),
                   "ema_meta.num_updates": host.asarray(ema.num_updates, dtype=host.int64),
                   "ema_meta.decay": host.asarray(ema.decay, dtype=host.float64)})
    if not ema_only:
        arrays.update({f"model.{k}": v for k, v in model.state_dict().items()})
        arrays.update({f"optim.{k}": v for k, v in optimizer.state_dict().items()})
        arrays.update({f"sched.{k}": v for k, v in scheduler.state_dict().items()})
        arrays["rng"] = _text(backend.get_rng_state())
        arrays["history.loss"] = host.asarray(list(history), dtype=host.float64)
    arrays.update({k: _text(v) if isinstance(v, str) else v for k, v in (extra or {}).items()})
    backend.save_npz(path, arrays)


def load_checkpoint(path) -> dict:
    """The arrays of a checkpoint, with ``config`` parsed back into a dict and ``step`` an int.

    Raises ``CheckpointError`` naming ``path`` if it is missing or not a checkpoint."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        arrays = backend.load_npz(path)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    if "config" not in arrays or not any(k.startswith("ema.") for k in arrays):
        raise CheckpointError(f"{path}: not a minidiff training checkpoint (no 'config' and "
                              "'ema.*' entries; was it written by Module.save?)")
    _check_finite(path, arrays)
    arrays["config"] = json.loads(str(arrays["config"]))
    arrays["step"] = int(arrays.get("step", 0))
    return arrays


def _check_finite(path, arrays: dict) -> None:
    """Refuse weights with NaN or Inf in them, naming the first such entry: sampling from
    them would draw black grids and exit 0."""
    host = backend.host
    for key, value in arrays.items():
        if value.dtype.kind == "f" and not host.isfinite(value).all():
            what = "NaN" if host.isnan(value).any() else "Inf"
            raise CheckpointError(f"{path} has {what} in {key}: the run diverged, or the file "
                                  "was damaged, before it was saved",
                                  "use an earlier checkpoint of the run")


def group(arrays: dict, prefix: str) -> dict:
    """The entries named ``prefix.<rest>``, keyed by ``<rest>``."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def model_from_checkpoint(path, use_ema: bool = True, arrays: dict | None = None):
    """``(model, config)`` rebuilt from a checkpoint's config, with its EMA (or raw) weights:
    a ``UNet``, or for a conditioned config a ``ConditionedUNet`` (``conditioning.build_model``).

    ``arrays``: what ``load_checkpoint(path)`` returned, for a caller that already read the
    file.  A config that does not match the stored weights raises ``StateDictError``."""
    from minidiff.conditioning import build_model  # noqa: PLC0415
    arrays = load_checkpoint(path) if arrays is None else arrays
    config = arrays["config"]
    if config.get("model", "unet") != "unet":
        raise CheckpointError(f"{path}: expected a diffusion checkpoint (model 'unet', from "
                              "'minidiff train --preset quick' or '--preset ldm-quick'), got "
                              f"model {config['model']!r}")
    weights = group(arrays, "ema" if use_ema else "model")
    if not weights:
        raise CheckpointError(f"--raw / --raw-weights: {path} holds no raw model weights (it "
                              "is an EMA-only export)", "leave the option out to use its EMA "
                              "weights, or give the run's checkpoint.npz")
    model = build_model(config)
    model.load_state_dict(weights)
    return model.eval(), config


def schedule_from_config(config: dict):
    """The ``NoiseSchedule`` a training configuration names (``schedule``, ``T``)."""
    from minidiff.diffusion import NoiseSchedule  # noqa: PLC0415
    name = config.get("schedule", "linear")
    if name not in ("linear", "cosine", "scaled_linear"):
        raise CheckpointError(f"unknown schedule {name!r} in the config; expected linear, "
                              "cosine or scaled_linear")
    return getattr(NoiseSchedule, name)(int(config.get("T", 1000)))


def eps_model_from_checkpoint(path, use_ema: bool = True, arrays: dict | None = None):
    """``(eps_model, schedule, config)``: what a sampler or the bound needs from a checkpoint.

    The network is wrapped by ``as_eps_model`` when it was trained to predict x_0 or v
    (config ``prediction``; checkpoints without that key predict eps)."""
    from minidiff.diffusion import as_eps_model  # noqa: PLC0415
    model, config = model_from_checkpoint(path, use_ema=use_ema, arrays=arrays)
    schedule = schedule_from_config(config)
    return as_eps_model(model, schedule, config.get("prediction", "eps")), schedule, config


def autoencoder_from_checkpoint(path, use_ema: bool = True, arrays: dict | None = None):
    """``(AutoencoderKL, config, scale_factor)`` from an autoencoder checkpoint (lesson 09).

    ``scale_factor`` is the float stored at the end of training (``scale_by_std``), or None
    for a checkpoint written mid-run, before it was measured.  A diffusion checkpoint here is
    a ``CheckpointError``, as an autoencoder is in ``model_from_checkpoint``."""
    from minidiff.models.autoencoder import AutoencoderKL  # noqa: PLC0415
    from minidiff.train.presets import autoencoder_config  # noqa: PLC0415
    arrays = load_checkpoint(path) if arrays is None else arrays
    config = arrays["config"]
    if config.get("model", "unet") != "autoencoder":
        raise CheckpointError(f"{path}: expected an autoencoder checkpoint (model "
                              "'autoencoder', from 'minidiff train --preset ae-quick'), got "
                              f"model {config.get('model', 'unet')!r}")
    weights = group(arrays, "ema" if use_ema else "model")
    if not weights:
        raise CheckpointError(f"{path}: holds no raw model weights (an EMA-only export); "
                              "use the EMA weights")
    model = AutoencoderKL(autoencoder_config(config))
    model.load_state_dict(weights)
    scale = float(arrays["scale_factor"]) if "scale_factor" in arrays else None
    return model.eval(), config, scale
