"""The one loader: any diffusion checkpoint -> a ``Pipeline`` ready to sample.

A checkpoint (``minidiff.checkpoint``: the weights and the flat config that made them) is
turned into the objects a sampler needs, whatever it holds -- pixels or latents, any
conditioning kind (``config.vocabulary``):

    pipeline = load_pipeline("data/checkpoints/txt2img.npz")
    cond, uncond = pipeline.cond(16, prompts=["a thick seven"] * 16)
    eps_model = pipeline.eps(cond, uncond, guidance=2.0)      # eps_theta(x_t, t) (11.4)
    z = ddim_sample(eps_model, pipeline.schedule, (16, *pipeline.space.shape), 50)
    images = pipeline.space.decode(z)

``pipelines.sample`` runs that loop in chunks with a seed, progress and frames.  The space
(pixels, or the autoencoder's latents, lesson 10) is rebuilt here too: a latent model's
autoencoder is loaded from the path its config records (or ``autoencoder=``) and checked
against the weights hash the checkpoint stores.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from minidiff.checkpoint import CheckpointError, group, load_checkpoint
from minidiff.config.build import autoencoder_config, build_model, schedule_from_config
from minidiff.config.vocabulary import kind_of, uses_text
from minidiff.data.captions import CaptionStats, Tokenizer
from minidiff.data.paths import DataNotFoundError, resolve_user_path
from minidiff.data.spaces import LatentSpace, PixelSpace, SpaceError, is_latent
from minidiff.diffusion.guidance import MAX_GUIDANCE, conditional_eps_model, guided
from minidiff.diffusion.samplers import SAMPLERS
from minidiff.models.autoencoder import AutoencoderKL
from minidiff.models.conditioned import ConditionError
from minidiff.nn.module import Module, StateDictError
from minidiff.errors import MinidiffInputError, check_float, check_int
from minidiff.pipelines.conditions import sampling_cond

__all__ = ["Pipeline", "load_pipeline", "model_sampler", "load_autoencoder",
           "space_from_config", "space_of"]


@dataclass
class Pipeline:
    """What sampling, inpainting and evaluation need from a diffusion checkpoint."""
    model: Module                  # ConditionedUNet, eval mode, EMA (or raw) weights
    schedule: object               # NoiseSchedule
    config: dict                   # the run's config, every key present (config.presets)
    space: object                  # PixelSpace or LatentSpace
    tokenizer: object | None       # captions.Tokenizer (text models)
    caption_stats: object | None   # captions.CaptionStats of the training set (text models)
    step: int = 0                  # optimizer steps the weights had
    path: str | None = None

    @property
    def kind(self) -> str:
        """The conditioning: none, crossattn, concat or hybrid."""
        return kind_of(self.config)

    @property
    def eps_model(self):
        """``eps_model(x_t, t, cond)``: the network seen as eps_theta, whatever it predicts
        (eps, x_0 or v; ``as_eps_model``)."""
        return conditional_eps_model(self.model, self.schedule, self.config["prediction"])

    def cond(self, n: int, prompts=None, images=None, masks=None):
        """``(cond, uncond)`` for ``n`` samples (``sampling_cond``); ``({}, {})`` for an
        unconditioned model."""
        return sampling_cond(self.config, n, prompts=prompts, tokenizer=self.tokenizer,
                             space=self.space, images=images, masks=masks)

    def eps(self, cond: dict | None = None, uncond: dict | None = None,
            guidance: float | None = None):
        """The ``eps_model(x_t, t)`` the samplers take.  ``cond`` None: an unconditioned
        model's eps_theta (a conditioned one needs its ``cond``).  With ``uncond`` too (a text
        model), classifier-free guidance (11.4) at ``guidance`` (default: the config's)."""
        if cond is None:
            if self.kind != "none":
                raise ConditionError(f"{self.path or 'this model'} is conditioned on "
                                     f"{self.kind!r}: sample it with a cond "
                                     "(Pipeline.cond; minidiff sample --prompt / inpaint)")
            cond = {}
        eps = self.eps_model
        if uncond is None or "tokens" not in cond:
            return lambda x_t, t: eps(x_t, t, cond)
        scale = float(self.config["guidance"] if guidance is None else
                      check_float("--guidance", guidance, low=0.0, high=MAX_GUIDANCE))
        return guided(eps, cond, uncond, scale)


def _weights(path, arrays: dict, use_ema: bool) -> dict:
    weights = group(arrays, "ema" if use_ema else "model")
    if not weights:
        raise CheckpointError(f"--raw / --raw-weights: {path} holds no raw model weights (it "
                              "is an EMA-only export)", "leave the option out to use its EMA "
                              "weights, or give the run's checkpoint.npz")
    return weights


def load_pipeline(path, use_ema: bool = True, autoencoder: str | None = None,
                  arrays: dict | None = None) -> Pipeline:
    """The ``Pipeline`` of a diffusion checkpoint: the network rebuilt from its config
    (``build_model``) with its EMA (or raw) weights, its schedule, its space and, for a text
    model, its tokenizer and caption statistics.  ``arrays``: what ``load_checkpoint(path)``
    returned, for a caller that already read the file; ``autoencoder``: a latent model's
    autoencoder if not at the recorded path.  Weights that do not fit the config raise
    ``CheckpointError``."""
    arrays = load_checkpoint(path) if arrays is None else arrays
    config = arrays["config"]
    if config["model"] != "unet":
        raise CheckpointError(f"{path}: expected a diffusion checkpoint (model 'unet', from "
                              "'minidiff train --preset quick' or '--preset ldm-quick'), got "
                              f"model {config['model']!r}")
    model = build_model(config)
    try:
        model.load_state_dict(_weights(path, arrays, use_ema))
    except StateDictError as error:
        raise CheckpointError(f"{path} does not fit the model its config describes: "
                              f"{' '.join(str(error).split())}") from None
    tokenizer = stats = None
    if uses_text(config):
        tokenizer = Tokenizer(int(config["max_tokens"]))
        if any(key.startswith("captions.") for key in arrays):   # else None: sampling
            try:                                                  # needs no statistics
                stats = CaptionStats.from_arrays(arrays)
            except (KeyError, ValueError) as error:
                raise CheckpointError(f"{path}: {error.args[0]}") from None
    return Pipeline(model.eval(), schedule_from_config(config), config,
                    space_of(arrays, autoencoder), tokenizer, stats, arrays["step"],
                    os.fspath(path))


def model_sampler(config: dict, sampler: str | None = None, steps: int | None = None) -> tuple:
    """``(sampler, steps)`` to draw from the model ``config`` describes: ``sampler`` and
    ``steps`` when given (``steps`` 0: all T), and for each one that is None the model's own,
    its config's ``sampler`` and ``sample_steps`` (a preset names how its samples are best
    drawn; a file written before the key existed loads as DDIM with 50 steps,
    ``checkpoint._upgrade``).  What ``minidiff sample``, ``eval`` and ``inpaint`` use when
    ``--sampler`` / ``--steps`` are left out.  Steps outside 0..T are refused here, before
    any sampling."""
    sampler = config["sampler"] if sampler is None else sampler
    if sampler not in SAMPLERS:
        raise MinidiffInputError(f"--sampler: expected one of {', '.join(SAMPLERS)}, "
                                 f"got {sampler!r}")
    if steps is None:
        return sampler, int(config["sample_steps"])
    T = int(config["T"])
    return sampler, int(check_int("--steps", steps, low=0, high=T)) or T


def load_autoencoder(path, use_ema: bool = True, arrays: dict | None = None):
    """``(AutoencoderKL, config, scale_factor)`` from an autoencoder checkpoint (lesson 09).

    ``scale_factor`` is the float stored at the end of training (``scale_by_std``), or None
    for a checkpoint written mid-run, before it was measured.  A diffusion checkpoint here is
    a ``CheckpointError``, as an autoencoder is in ``load_pipeline``."""
    arrays = load_checkpoint(path) if arrays is None else arrays
    config = arrays["config"]
    if config["model"] != "autoencoder":
        raise CheckpointError(f"{path}: expected an autoencoder checkpoint (model "
                              "'autoencoder', from 'minidiff train --preset ae-quick'), got "
                              f"model {config['model']!r}")
    model = AutoencoderKL(autoencoder_config(config))
    model.load_state_dict(_weights(path, arrays, use_ema))
    scale = float(arrays["scale_factor"]) if "scale_factor" in arrays else None
    return model.eval(), config, scale


def _check_fits(space, config: dict, where: str) -> None:
    """The U-Net's input must be the space's x_0: (in_channels, image_size, image_size)."""
    channels, size = int(config["in_channels"]), int(config["image_size"])
    if space.shape != (channels, size, size):
        raise SpaceError(
            f"{where}: the autoencoder's latents are {'x'.join(map(str, space.shape))} but the "
            f"U-Net config expects in_channels={channels}, image_size={size}; set "
            f"in_channels={space.shape[0]} out_channels={space.shape[0]} "
            f"image_size={space.shape[1]}")
    if int(config["out_channels"]) not in (channels, 2 * channels):
        raise SpaceError(f"{where}: out_channels ({config['out_channels']}) must equal "
                         f"in_channels ({channels}), or twice it with a learned variance: the "
                         f"U-Net predicts noise of x_0's shape")


def space_from_config(config: dict, autoencoder_path: str | None = None,
                      expected_sha256: str | None = None):
    """The space a diffusion config trains or samples in: pixels unless it names an
    ``autoencoder`` (a path; ``autoencoder_path`` overrides it for a latent model).
    ``expected_sha256``: the hash recorded by the checkpoint; a different autoencoder raises
    ``SpaceError`` naming both hashes."""
    if not is_latent(config):
        space = PixelSpace(int(config["image_size"]), int(config["in_channels"]))
        _check_fits(space, config, "pixel space")
        return space
    try:
        path = resolve_user_path(autoencoder_path or config["autoencoder"])  # data/... anywhere
    except DataNotFoundError as error:
        raise SpaceError(f"autoencoder: {error} (train one with "
                         "'minidiff train --preset ae-quick', or --set autoencoder=PATH)"
                         ) from None
    if not os.path.exists(path):
        raise SpaceError(f"autoencoder: checkpoint not found: {path} (train one with "
                         "'minidiff train --preset ae-quick', or --set autoencoder=PATH)")
    try:
        autoencoder, _, scale_factor = load_autoencoder(path)
    except CheckpointError as error:
        raise SpaceError(f"autoencoder: {error}") from None
    if scale_factor is None:
        raise SpaceError(f"autoencoder {path}: holds no latent scale factor (written before "
                         "its training finished); use the ema.npz of a finished run")
    space = LatentSpace(autoencoder, scale_factor, path)
    if expected_sha256 and space.sha256 != expected_sha256:
        raise SpaceError(
            f"autoencoder {path} is not the one this model was trained on: its weights hash "
            f"to sha256 {space.sha256[:16]}..., the checkpoint records {expected_sha256[:16]}...; "
            "give the right one with --autoencoder PATH")
    _check_fits(space, config, f"autoencoder {path}")
    return space


def space_of(arrays: dict, autoencoder_path: str | None = None):
    """The space of a loaded diffusion checkpoint (``load_checkpoint``'s dict): pixels, or
    the recorded autoencoder, checked against the weights hash the checkpoint stores."""
    expected = arrays.get("autoencoder.sha256")
    return space_from_config(arrays["config"], autoencoder_path,
                             None if expected is None else str(expected))
