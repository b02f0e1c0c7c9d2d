"""Training configurations: named presets, a JSON file, and ``--set key=value`` overrides.

A configuration is one flat dict, so every value has exactly one name on the command line.
It is resolved in layers, later ones winning:

    PRESETS[name]  <-  --config file.json  <-  --set key=value ...  (and explicit flags)

``model`` names what is trained: ``"unet"`` (a diffusion model; model keys go to
``UNetConfig``) or ``"autoencoder"`` (lesson 09; model keys go to ``AutoencoderConfig``, and
``recon_loss``, ``kl_weight`` shape its loss).  The rest drive the schedule, the optimizer and
the logging.  Unknown keys are refused with the list of known
ones, so a typo cannot silently train the default.
"""
from __future__ import annotations

import json
import os

from minidiff.config.checks import ConfigError, check_config
from minidiff.config.vocabulary import CONDITIONINGS, MODELS
from minidiff.diffusion import (OBJECTIVES, PREDICTIONS, SAMPLERS, SCHEDULES, T_SAMPLERS,
                                VARIANCES)
from minidiff.models.autoencoder import RECON_LOSSES

__all__ = ["PRESETS", "DEFAULTS", "with_defaults", "resolve", "parse_set"]


DEFAULTS = {
    # what is trained: "unet" (diffusion) or "autoencoder" (lesson 09)
    "model": "unet",
    # data and diffusion: x_0 is (in_channels, image_size, image_size); a non-empty
    # ``autoencoder`` (a checkpoint path) makes it that autoencoder's latents (lesson 10)
    "in_channels": 1, "out_channels": 1, "image_size": 28, "T": 1000, "schedule": "linear",
    "autoencoder": "",
    # the U-Net's patch: p > 1 runs it on (H/p) x (W/p) pixels of p^2 channels each (UNet)
    "patch_size": 1,
    # what the network predicts: "eps" (Ho et al.), "x0" or "v" (lesson 02, (2.5)-(2.6))
    "prediction": "eps",
    # what it is trained on (lesson 13): L_simple, the bound (vlb) or L_simple + vlb_weight
    # L_vlb (hybrid, needs variance "learned"); the reverse variance; how t is drawn
    "objective": "simple", "variance": "fixed_small", "vlb_weight": 0.001,
    "t_sampler": "uniform",
    # Min-SNR-gamma loss weighting of L_simple (lesson 04, (4.9)): min(snr_t, gamma) on the
    # implied x_0 error; 0 leaves L_simple unweighted
    "min_snr_gamma": 0.0,
    # optimization (AdamW, linear warm-up then cosine decay, clipping, EMA), float32
    "lr": 2e-4, "weight_decay": 0.0, "warmup_steps": 500, "min_lr": 0.0, "grad_clip": 1.0,
    "ema_decay": 0.999, "batch_size": 128, "steps": 50_000, "seed": 0,
    # data: 0 means the whole 60,000-image training set
    "train_images": 0,
    # bookkeeping, in steps (0 turns a thing off)
    "log_every": 50, "sample_every": 2500, "checkpoint_every": 1000, "diag_every": 2500,
    "sample_count": 64,
    # how the model's samples are drawn, by the trainer's grids and by default by minidiff
    # sample / eval / inpaint: "ddim" (eta 0) or "ddpm" (ancestral, with the config's
    # variance), in sample_steps respaced steps (lesson 08)
    "sampler": "ddim", "sample_steps": 50,
    # conditioning (lesson 11, ``minidiff.models.conditioned``): "none", "crossattn" (a caption
    # through the text encoder tau_theta, cross-attended), "concat" (mask + masked image as
    # extra input channels: inpainting) or "hybrid" (both); the text encoder's width, depth,
    # heads and caption length; the chance of training on the empty caption (classifier-free
    # guidance), the fraction of training masks covering everything, the default guidance;
    # the default guidance over the known part of an image when a concat model completes one
    # without a caption (1: none, the plain conditional model)
    "conditioning": "none", "context_dim": 64, "text_layers": 2, "text_heads": 4,
    "max_tokens": 8, "caption_dropout": 0.1, "mask_all_fraction": 0.25, "guidance": 3.0,
    "image_guidance": 1.0,
}

PRESETS = {
    # A small U-Net on 2x2 patches (369k parameters: each image is 4 x 14 x 14 to it, 24 and
    # 48 channels at 14 and 7, one ResBlock per level, attention only in the middle at 7x7).
    # At this budget steps pay more than width: 24 channels train about 1.7 times as many
    # steps as 32 in the same time at one thread and scored 15 FID points better on two
    # seeds; 16 channels were worse again.  It predicts x_0: not eps (lesson 07: an eps error
    # is multiplied by 1 / sqrt(snr_t) in x_0, large near t = T, which a short run cannot
    # afford), and x_0 beat v on two seeds; with the cosine schedule, lr 1e-3 and ancestral
    # sampling in 200 steps, that measured best at this budget (docs/recipes.md).  Batch 48,
    # not 32: minidiff's two threads share out a batch of 48 better (about 1.4 times the
    # images a second); 3,500 steps of 48 scored better than 4,000 of 32 at n = 1,000 on
    # both training seeds tried.  Two grids, at step 2,000 and at the end.  Its time and
    # figures: data/checkpoints/quick.md.
    "quick": {**DEFAULTS, "patch_size": 2, "base_channels": 24, "channel_mults": [1, 2],
              "num_res_blocks": 1, "attention_resolutions": [], "num_heads": 4,
              "dropout": 0.0, "groups": 8, "time_embed_dim": 32, "prediction": "x0",
              "schedule": "cosine", "batch_size": 48, "lr": 1e-3, "warmup_steps": 50,
              "min_lr": 1e-4, "steps": 3500, "ema_decay": 0.995, "log_every": 10,
              "sample_every": 2000, "checkpoint_every": 100, "diag_every": 2000,
              "sampler": "ddpm", "sample_steps": 200},
    # Latent diffusion (lesson 10) in the 4x7x7 latents of the shipped autoencoder
    # (data/checkpoints/ae.npz; --set autoencoder=PATH for another): a one-level U-Net at 7x7
    # (221k parameters: 32 channels, two ResBlocks, attention only in the middle block),
    # chosen so that sampling costs about a tenth of the pixel model's (bench ldm).  A batch
    # of 128 latents costs about a quarter of a batch of 32 images, so its 4,800 steps see
    # 3.7 times as many examples as ``quick``'s 3,500; with ``ae-quick`` (2.5 minutes) and the
    # encoding of the training set they fill about 13 of the 15 minutes the README allows
    # both on an idle 2-core machine (2,500 steps, the budget of a loaded machine, scored
    # FID 32.9 where 4,800 score 23.3).  It predicts x_0 as ``quick`` does: x_0 beat v on
    # two seeds here too, and so did an EMA over about 1,000 steps (decay 0.999) against one
    # over 200 (FID 2-4.5 points lower).  The recipe (the cosine schedule, a learning rate
    # eight times ``quick``'s, ancestral sampling in 50 steps, which beat 25, 100 and 250)
    # is what measured best at this budget: docs/recipes.md.  Time and figures:
    # data/checkpoints/ldm.md.
    "ldm-quick": {**DEFAULTS, "autoencoder": os.path.join("data", "checkpoints", "ae.npz"),
                  "in_channels": 4, "out_channels": 4, "image_size": 7, "base_channels": 32,
                  "channel_mults": [1], "num_res_blocks": 2, "attention_resolutions": [],
                  "num_heads": 4, "dropout": 0.0, "groups": 8, "time_embed_dim": 32,
                  "prediction": "x0", "schedule": "cosine", "batch_size": 128, "lr": 8e-3,
                  "warmup_steps": 100, "min_lr": 1e-4, "steps": 4800, "ema_decay": 0.999,
                  "log_every": 50, "sample_every": 500, "checkpoint_every": 250,
                  "diag_every": 1250, "sampler": "ddpm", "sample_steps": 50},
    # Text to image (lesson 11): ``ldm-quick``'s U-Net in the same latents, conditioned on a
    # caption by cross-attention: tau_theta (2 blocks, width 64, 4 heads) reads the caption,
    # and the middle block's attention becomes a SpatialTransformer (self-attention over the
    # 49 latent pixels, cross-attention to the caption).  Only there: the whole U-Net is at
    # 7x7, a transformer after every ResBlock costs about twice the steps' time, and what a
    # digit, a thickness and a slant say is global, which one read at the bottleneck carries
    # (the comparison: data/checkpoints/txt2img.md).  Caption dropout 0.1 for classifier-free
    # guidance, sampled at guidance 2 by default, where the shipped model's prompted accuracy
    # first passes 98% (txt2img.md); grids: one row per digit word.
    "txt2img-quick": None,
    # Inpainting and text (lesson 11): the same with the mask and E(masked image)
    # concatenated to z_t (1 + 4 input channels); a quarter of the training masks cover
    # everything, so the model also generates from a caption alone.  Time and figures:
    # data/checkpoints/inpaint.md.
    "inpaint-quick": None,
    # The article's claim (lesson 13): a small pixel U-Net (16/32/64 channels at 28/14/7)
    # predicting eps (as both papers do), one run per objective (--set objective=simple |
    # vlb | hybrid; hybrid with --set variance=learned), the same budget, seed and
    # learning-rate schedule for all.
    # No gradient clipping (as improved DDPM): L_vlb is T times the mean bound term, so its
    # gradient norms are two orders of magnitude above L_simple's, and a clip at 1.0 would
    # rescale every vlb step while almost never touching the others (the norms, the time:
    # data/checkpoints/claim.md).
    "claim": {**DEFAULTS, "base_channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1,
              "attention_resolutions": [], "num_heads": 4, "dropout": 0.0, "groups": 8,
              "time_embed_dim": 32, "prediction": "eps", "batch_size": 32, "lr": 2e-3,
              "warmup_steps": 100, "min_lr": 1e-4, "grad_clip": 0.0, "steps": 3000,
              "ema_decay": 0.998, "log_every": 50, "sample_every": 500,
              "checkpoint_every": 250, "diag_every": 1000, "sample_steps": 50},
    # The reference configuration of lesson 06 (``REFERENCE_CONFIG``, 1,623,169 parameters);
    # hours on a CPU; not trained here (``minidiff --backend cupy train --preset mnist``).
    "mnist": {**DEFAULTS, "base_channels": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 2,
              "attention_resolutions": [7], "num_heads": 4, "dropout": 0.1, "groups": 8,
              "time_embed_dim": 32},
}

# The conditional presets predict x_0 as ldm-quick does (on txt2img-quick it made slant
# obeyed, data/checkpoints/txt2img.md; on inpaint-quick 5-6 points more completions keep
# their label, on two seeds) but keep the rest of the recipe their shipped models were
# trained with (linear schedule, lr 2e-3, EMA 0.995, DDIM): ldm-quick's cosine schedule and
# lr 8e-3 cost the text model its slant (docs/recipes.md).  Their steps fill the 15 minutes the
# README allows each on an idle 2-core machine, encoding included (13 min 44 s and 14 min
# 11 s; the 2,500 and 1,800 steps before took about 10): the text model's digits follow
# their caption better on two training seeds, and the inpainting model keeps the label of
# about 2 points more completions (data/checkpoints/txt2img.md, inpaint.md).  The
# inpainting model completes at image guidance 2 by default, which leans a completion
# towards the digit the known part makes likeliest (1.4 to 3.7 points more completions
# keep their label, on every model measured).
PRESETS["txt2img-quick"] = {**PRESETS["ldm-quick"], "conditioning": "crossattn",
                            "schedule": "linear", "lr": 2e-3, "ema_decay": 0.995,
                            "sampler": "ddim",
                            "attention_resolutions": [], "steps": 3500,
                            "sample_every": 500, "checkpoint_every": 200, "diag_every": 1250,
                            "sample_count": 80, "sample_steps": 50, "guidance": 2.0}
PRESETS["inpaint-quick"] = {**PRESETS["txt2img-quick"], "conditioning": "hybrid",
                            "steps": 2800, "diag_every": 900,
                            "sample_every": 600, "guidance": 3.0, "image_guidance": 2.0}

# The KL autoencoder of lesson 09 (402,041 parameters: 16/32/64 channels at 28/14/7, one
# ResBlock per level), 4 x 7 x 7 latents, an L2 reconstruction + kl_weight * KL (per image,
# summed, (9.5)).  The choices are measured in data/checkpoints/ae.md.
_AE = {**DEFAULTS, "model": "autoencoder", "base_channels": 16, "channel_mults": [1, 2, 4],
       "num_res_blocks": 1, "latent_channels": 4, "groups": 8, "dropout": 0.0,
       "recon_loss": "l2", "kl_weight": 1e-4, "scale_images": 10_000}
PRESETS["ae-quick"] = {**_AE, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50,
                       "min_lr": 1e-4, "steps": 1000, "ema_decay": 0.99, "log_every": 10,
                       "sample_every": 250, "checkpoint_every": 100, "diag_every": 0}
PRESETS["ae"] = {**_AE, "base_channels": 32, "num_res_blocks": 2, "batch_size": 64,
                 "lr": 1e-3, "warmup_steps": 200, "min_lr": 1e-5, "steps": 20_000,
                 "ema_decay": 0.999, "log_every": 50, "sample_every": 1000,
                 "checkpoint_every": 500, "diag_every": 0}


def with_defaults(config: dict) -> dict:
    """``config`` with every key it lacks taken from ``DEFAULTS``: a file written before a key
    existed keeps its old behaviour, and code reads ``config[key]``, never a default of its
    own."""
    return {**DEFAULTS, **config}


def parse_set(item: str) -> tuple:
    """``"key=value"`` -> (key, value); the value is read as JSON (numbers, lists, true),
    falling back to the plain string (``schedule=cosine``)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise ConfigError(f"--set expects key=value (e.g. --set lr=1e-3), got {item!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text.strip()
    return key, value


def _check_keys(values: dict, where: str, known) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: "
                          + ", ".join(sorted(known)))


def _check_type(key: str, value, reference) -> None:
    """Refuse a value of the wrong kind (``--set lr=fast``, ``--set channel_mults=[1,2``)."""
    if isinstance(reference, list) and not isinstance(value, list):
        raise ConfigError(f"{key} must be a JSON list like {json.dumps(reference)}, "
                          f"got {value!r}")
    number = isinstance(reference, (int, float)) and not isinstance(reference, bool)
    if number and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{key} must be a number, got {value!r}")


def resolve(preset: str = "quick", config_file: str | None = None, sets=(),
            overrides: dict | None = None, base: dict | None = None) -> dict:
    """The configuration for ``preset`` (or ``base``, e.g. one read from a checkpoint) with
    the JSON file, then the ``--set`` items, then ``overrides`` (explicit flags) applied."""
    if base is None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of: "
                              + ", ".join(PRESETS))
        base = PRESETS[preset]
    # a key added to minidiff after a checkpoint was written takes its old behaviour
    config = {**DEFAULTS, **base}
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigError(f"--config: {config_file} is "
                              + ("a folder" if os.path.isdir(config_file) else "not found")
                              + ", expected a JSON file")
        try:
            with open(config_file, encoding="utf-8") as stream:
                loaded = json.load(stream)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--config: {config_file} is not valid JSON ({error})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--config: {config_file} is not a JSON text file") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config: {config_file}: expected a JSON object of key: value, "
                              f"got a {type(loaded).__name__}")
        _check_keys(loaded, config_file, config)
        config.update(loaded)
    parsed = dict(parse_set(item) for item in sets)
    _check_keys(parsed, "--set", config)
    config.update(parsed)
    config.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for key, value in config.items():
        _check_type(key, value, base.get(key))
    choices = {"prediction": PREDICTIONS, "schedule": SCHEDULES, "model": MODELS,
               "objective": OBJECTIVES, "variance": VARIANCES, "t_sampler": T_SAMPLERS,
               "conditioning": CONDITIONINGS, "sampler": SAMPLERS}
    if config["model"] == "autoencoder":
        missing = sorted(set(_AE) - set(config))
        if missing:
            raise ConfigError(f"model=autoencoder needs the keys {', '.join(missing)}; start "
                              "from --preset ae-quick (or ae)")
        choices["recon_loss"] = RECON_LOSSES
        for key, low in (("latent_channels", 1), ("scale_images", 0)):
            if not isinstance(config[key], int) or config[key] < low:
                raise ConfigError(f"{key} must be an integer >= {low}, got {config[key]!r}")
        if config["kl_weight"] < 0:
            raise ConfigError(f"kl_weight must be >= 0, got {config['kl_weight']!r}")
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {config[key]!r}")
    for key in ("steps", "batch_size", "T"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {config[key]!r}")
    if config["objective"] == "hybrid" and config["variance"] != "learned":
        raise ConfigError(f"objective=hybrid learns the variance: it needs variance=learned, "
                          f"got variance={config['variance']}")
    if config["variance"] == "learned" and config["objective"] == "simple":
        raise ConfigError("variance=learned is trained by the bound: it needs objective=vlb "
                          "or hybrid, got objective=simple")
    return check_config(config)


