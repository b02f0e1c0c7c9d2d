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

Two entries guard the config against edits made after saving: ``config_sha256``, the sha256
of the config text as written, and ``config_sealed``, the values of ``SEALED`` (JSON), the keys
the weights' meaning depends on but their shapes do not reveal (a network trained for T = 1000
steps to predict v loads without complaint as one for T = 500 predicting eps, and samples
noise).  ``load_checkpoint`` refuses a file whose config no longer hashes to its
``config_sha256`` and differs from ``config_sealed`` in a sealed key, naming each such key;
other edits (a bookkeeping key; a changed architecture fails on the weights' shapes) pass.
Files written before these entries existed load as before.

The config's ``model`` says what was trained: ``"unet"`` (a diffusion model; checkpoints
written before the key existed are U-Nets) or ``"autoencoder"`` (lesson 09), whose files also
hold ``scale_factor``, the measured latent scale (float64 scalar), in the export too.
"""
from __future__ import annotations

import hashlib
import json
import os

from minidiff import backend
from minidiff.config.presets import DEFAULTS, with_defaults
from minidiff.errors import MinidiffInputError

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "group", "SEALED"]

#: config keys that the weights depend on and their shapes do not show (module docstring)
SEALED = ("model", "T", "schedule", "prediction", "variance", "image_size")


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
    text = json.dumps(config, sort_keys=True)
    arrays.update({"config": _text(text),
                   "config_sha256": _text(_sha256(text)),
                   "config_sealed": _text(json.dumps({k: config[k] for k in SEALED
                                                      if k in config}, sort_keys=True)),
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
    try:
        config = json.loads(str(arrays["config"]))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: its config entry is not JSON ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its config entry is a JSON {type(config).__name__}, "
                              "expected an object of key: value")
    _check_sealed(path, arrays, config)
    arrays["config"] = config
    arrays["step"] = int(arrays.get("step", 0))
    return _upgrade(arrays)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_sealed(path, arrays: dict, config: dict) -> None:
    """Refuse a config edited after saving in a key the weights depend on (module docstring):
    a ``CheckpointError`` naming each such key with its value at save time and now."""
    if "config_sha256" not in arrays or _sha256(str(arrays["config"])) == str(
            arrays["config_sha256"]):
        return
    try:
        sealed = json.loads(str(arrays.get("config_sealed", "{}")))
    except json.JSONDecodeError:
        sealed = {}
    changed = [f"{key} {json.dumps(value)} -> {json.dumps(config.get(key))}"
               for key, value in sorted(sealed.items()) if config.get(key) != value]
    if changed:
        raise CheckpointError(
            f"{path}: its config was edited after saving in what the weights were trained "
            f"for ({', '.join(changed)})", "restore the saved values: weights trained for "
            "them sample noise under others")


def _upgrade(arrays: dict) -> dict:
    """A file written by an earlier minidiff, read as today's (its stored ``config`` as
    written, before defaults):

    * a config key added since takes its default (``with_defaults``), except that a config
      without ``sampler``, written before a model named the sampler its samples are drawn
      with, gets the one ``minidiff sample`` and ``eval`` then used, DDIM with 50 steps (at
      most T): its ``sample_steps`` were the trainer's grids' only;
    * files written when an unconditioned network was a bare ``UNet`` name its weights
      ``ema.<param>``; the network is now always a ``ConditionedUNet``
      (``ema.unet.<param>``)."""
    config = arrays["config"]
    if "sampler" not in config:
        config = {**config, "sampler": "ddim",
                  "sample_steps": min(50, int(config.get("T", DEFAULTS["T"])))}
    arrays["config"] = with_defaults(config)
    if arrays["config"]["model"] != "unet" or any(k.startswith(("ema.unet.", "ema.text_encoder."))
                                                  for k in arrays):
        return arrays
    return {(f"{k[:k.index('.')]}.unet.{k[k.index('.') + 1:]}"
             if k.startswith(("ema.", "model.")) else k): v for k, v in arrays.items()}


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


