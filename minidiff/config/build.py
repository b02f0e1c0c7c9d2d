"""Configuration -> object: every factory of minidiff in one place.

``build_model`` (the network of a diffusion config, a ``ConditionedUNet`` for every
conditioning kind), ``model_config`` / ``autoencoder_config`` (the model keys of a flat config),
``schedule_from_config`` (its ``NoiseSchedule``).  What a factory needs from a file (the
autoencoder of a latent model, a checkpoint's weights) is loaded by ``minidiff.pipelines.load``.
"""
from __future__ import annotations

from minidiff.config.checks import ConfigError
from minidiff.config.presets import with_defaults
from minidiff.config.vocabulary import CONDITIONINGS, kind_of, uses_concat, uses_text
from minidiff.data.captions import VOCABULARY
from minidiff.diffusion import NoiseSchedule, SCHEDULES
from minidiff.models.autoencoder import AutoencoderConfig
from minidiff.models.conditioned import ConditionError, ConditionedUNet
from minidiff.models.text_encoder import TextEncoder
from minidiff.models.unet import UNet, UNetConfig

__all__ = ["build_model", "model_config", "autoencoder_config", "schedule_from_config",
           "MODEL_KEYS", "AE_MODEL_KEYS"]


#: keys forwarded to ``UNetConfig``
MODEL_KEYS = ("in_channels", "out_channels", "image_size", "base_channels", "channel_mults",
              "num_res_blocks", "attention_resolutions", "num_heads", "dropout", "groups",
              "time_embed_dim", "patch_size")


#: keys forwarded to ``AutoencoderConfig``
AE_MODEL_KEYS = ("image_size", "base_channels", "channel_mults", "num_res_blocks",
                 "latent_channels", "groups", "dropout")


def build_model(config: dict):
    """The network a diffusion config describes: a ``ConditionedUNet`` for every conditioning
    kind (for ``none`` a U-Net without text encoder or extra input channels)."""
    config = with_defaults(config)
    kind = kind_of(config)
    if kind not in CONDITIONINGS:
        raise ConditionError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got "
                             f"{kind!r}")
    unet_config = model_config(config)
    values = unet_config.to_dict()
    if uses_text(config):
        values["context_dim"] = int(config["context_dim"])
    if uses_concat(config):   # the mask and the space's encoding of the masked image
        values["concat_channels"] = 1 + int(config["in_channels"])
    unet = UNet(UNetConfig.from_dict(values))
    text_encoder = None
    if uses_text(config):
        text_encoder = TextEncoder(len(VOCABULARY), int(config["context_dim"]),
                                   int(config["text_layers"]), int(config["text_heads"]),
                                   int(config["max_tokens"]))
    return ConditionedUNet(unet, text_encoder)


def schedule_from_config(config: dict):
    """The ``NoiseSchedule`` a training configuration names (``schedule``, ``T``)."""
    config = with_defaults(config)
    name = config["schedule"]
    if name not in SCHEDULES:
        raise ConfigError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {name!r}")
    return getattr(NoiseSchedule, name)(int(config["T"]))


def model_config(config: dict):
    """The ``UNetConfig`` a training configuration describes; with ``variance: learned`` the
    U-Net has 2 * in_channels outputs (the prediction, then v of (13.1))."""
    config = with_defaults(config)
    values = {k: config[k] for k in MODEL_KEYS if k in config}
    if config["variance"] == "learned":
        values["out_channels"] = 2 * int(config["in_channels"])
    return UNetConfig.from_dict(values)


def autoencoder_config(config: dict):
    """The ``AutoencoderConfig`` a training configuration with ``model: autoencoder`` describes."""
    return AutoencoderConfig.from_dict({k: config[k] for k in AE_MODEL_KEYS if k in config})
