"""Checking a whole training configuration before anything is built (issue 15).

``check_config(config)`` refuses, with one ``ConfigError`` naming the key, every value the
trainer or the U-Net could not use or would use silently wrong: counts below their minimum,
rates out of range, GroupNorm groups that do not divide a channel count, attention heads that
do not divide the attention channels, an image size the downsampling cannot halve, an
attention resolution the network never reaches, a sampler minidiff does not have, more
sampling steps than T.
``check_data(config, images)`` then compares the configuration with the data it will train
on (image size, enough images for one batch, uint8 pixels).

Only keys present are checked, so a configuration with extra keys (another model family)
passes through to its own checks.
"""
from __future__ import annotations

from minidiff.diffusion.guidance import MAX_GUIDANCE
from minidiff.diffusion.samplers import SAMPLERS
from minidiff.errors import MinidiffInputError, check_float, check_int

__all__ = ["ConfigError", "check_config", "check_data", "resolutions"]


class ConfigError(MinidiffInputError):
    """A preset, config file or override the trainer cannot use."""


#: key -> smallest allowed integer
_AT_LEAST = {"steps": 1, "batch_size": 1, "T": 1, "seed": 0, "warmup_steps": 0,
             "train_images": 0, "log_every": 0, "sample_every": 0, "checkpoint_every": 0,
             "diag_every": 0, "sample_count": 1, "sample_steps": 1, "base_channels": 1,
             "num_res_blocks": 0, "num_heads": 1, "groups": 1, "time_embed_dim": 2,
             "image_size": 1, "patch_size": 1, "context_dim": 1, "text_layers": 0, "text_heads": 1,
             "max_tokens": 1}
#: key -> (low, high, high excluded)
_NUMBERS = {"lr": (0.0, None, False), "min_lr": (0.0, None, False),
            "weight_decay": (0.0, None, False), "grad_clip": (0.0, None, False),
            "ema_decay": (0.0, 1.0, True), "dropout": (0.0, 1.0, True),
            "caption_dropout": (0.0, 1.0, False), "mask_all_fraction": (0.0, 1.0, False),
            "guidance": (0.0, MAX_GUIDANCE, False), "image_guidance": (0.0, MAX_GUIDANCE, False),
            "vlb_weight": (0.0, None, False), "min_snr_gamma": (0.0, None, False)}


def _checked(check, *args):
    """Run an ``errors.check_*`` helper, re-raising its error as a ``ConfigError``."""
    try:
        return check(*args)
    except MinidiffInputError as error:
        raise ConfigError(str(error)) from None


def resolutions(config: dict) -> list:
    """The image size at each level of the U-Net: image_size / p, image_size / 2p, ... (p the
    patch size)."""
    size = config["image_size"] // config.get("patch_size", 1)
    return [size // 2 ** level for level in range(len(config["channel_mults"]))]


def check_config(config: dict) -> dict:
    """``config`` if every value in it can be trained; else a ``ConfigError`` naming the key."""
    for key, low in _AT_LEAST.items():
        if key in config:
            _checked(check_int, key, config[key], low)
    for key, (low, high, high_open) in _NUMBERS.items():
        if key in config:
            _checked(check_float, key, config[key], low, high, high_open)
    if config.get("time_embed_dim", 2) % 2:
        raise ConfigError(f"time_embed_dim: expected an even number ([cos | sin] halves), "
                          f"got {config['time_embed_dim']}")
    if "sampler" in config and config["sampler"] not in SAMPLERS:
        raise ConfigError(f"sampler: expected one of {', '.join(SAMPLERS)}, "
                          f"got {config['sampler']!r}")
    if "sample_steps" in config and "T" in config and config["sample_steps"] > config["T"]:
        raise ConfigError(f"sample_steps: expected at most T = {config['T']}, "
                          f"got {config['sample_steps']}")
    if "channel_mults" in config:
        _check_unet(config)
    if config.get("conditioning", "none") != "none":
        _check_conditioning(config)
    return config


def _check_conditioning(config: dict) -> None:
    kind = config["conditioning"]
    if config.get("model", "unet") != "unet":
        raise ConfigError(f"conditioning: only a diffusion U-Net is conditioned, this config "
                          f"trains model {config['model']!r}; leave conditioning none")
    if kind in ("crossattn", "hybrid") and config.get("context_dim", 64) % \
            config.get("text_heads", 4):
        raise ConfigError(f"text_heads: {config['text_heads']} heads do not divide "
                          f"context_dim {config['context_dim']}")


def _check_unet(config: dict) -> None:
    mults = config["channel_mults"]
    if not mults or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1
                            for m in mults):
        raise ConfigError(f"channel_mults: expected a non-empty list of positive integers, "
                          f"got {mults!r}")
    size, levels = config.get("image_size", 28), len(mults)
    patch = config.get("patch_size", 1)
    if size % patch:
        raise ConfigError(f"patch_size: {patch} does not divide image_size {size}")
    factor = 2 ** (levels - 1)
    if (size // patch) % factor:
        raise ConfigError(f"image_size: {size} cannot be halved {levels - 1} time(s) exactly "
                          f"by the {levels} levels of channel_mults {mults}"
                          + (f" after {patch}x{patch} patches ({size // patch})" if patch > 1
                             else "") + f"; use a multiple of {factor * patch}")
    base, groups = config.get("base_channels", 32), config.get("groups", 8)
    for channels in sorted({base, *(base * m for m in mults)}):
        if channels % groups:
            raise ConfigError(f"groups: {groups} GroupNorm groups do not divide {channels} "
                              f"channels (base_channels {base} x channel_mults {mults})")
    reached = resolutions(config)
    attention = config.get("attention_resolutions", [])
    if not isinstance(attention, list) or any(r not in reached for r in attention):
        raise ConfigError(f"attention_resolutions: expected sizes the U-Net reaches "
                          f"({', '.join(map(str, reached))}), got {attention!r}")
    heads = config.get("num_heads", 4)
    attended = {base * mults[-1]}          # the middle block always attends
    attended |= {base * m for m, r in zip(mults, reached) if r in attention}
    for channels in sorted(attended):
        if channels % heads:
            raise ConfigError(f"num_heads: {heads} heads do not divide the {channels} "
                              "channels of an attention block")


def check_data(config: dict, images) -> None:
    """The data fits the configuration: uint8 (N, 1, S, S) pixels with S = image_size, at
    least ``train_images`` of them, and at least one batch."""
    shape = tuple(images.shape)
    if len(shape) != 4 or str(images.dtype) != "uint8":
        raise ConfigError(f"training images: expected uint8 pixels (N, C, H, W) in [0, 255], "
                          f"got {images.dtype} of shape {shape}")
    # a latent model's image_size is its latents' (the autoencoder checks the pixels)
    size = shape[-1] if config.get("autoencoder") else config.get("image_size", shape[-1])
    if shape[-2:] != (size, size):
        raise ConfigError(f"image_size: the configuration says {size}, the data is "
                          f"{shape[-2]}x{shape[-1]}")
    n = shape[0]
    if config.get("train_images", 0) > n:
        raise ConfigError(f"train_images: expected at most the {n:,} images of the data, "
                          f"got {config['train_images']:,}")
    usable = config.get("train_images", 0) or n
    if config.get("batch_size", 1) > usable:
        raise ConfigError(f"batch_size: expected at most the {usable:,} training images "
                          f"(train_images), got {config['batch_size']:,}")
