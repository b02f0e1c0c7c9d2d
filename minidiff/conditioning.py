"""The conditioning switch (lesson 11): the one place that says what a diffusion model is
conditioned on, in the spirit of CompVis' ``DiffusionWrapper``.

    conditioning   the U-Net's input                        what ``cond`` holds
    none           eps_theta(x_t, t)                        nothing (a bare ``UNet``)
    crossattn      eps_theta(x_t, t, tau_theta(y))          "tokens" (N, L) int64
    concat         eps_theta([x_t, m, E(x_known)], t)       "concat" (N, 1 + C, h, w)
    hybrid         both                                     "tokens" and "concat"

* Text y (a caption, ``minidiff.captions``) goes through the transformer tau_theta
  (``TextEncoder``) to a sequence that the U-Net's ``SpatialTransformer`` blocks cross-attend
  to (context_dim wide).
* Spatial inputs are concatenated to x_t as extra channels: for inpainting the mask m
  (1 = to fill) on the space's grid (28x28 pixels or the 7x7 latent grid), and the space's
  encoding of the masked image x_known (every pixel to fill set to 0, ``masks.masked_image``),
  so no pixel under the mask reaches the network.

**Training.**  Each item's caption is replaced by the empty caption (all padding) with
probability ``caption_dropout``, so one network learns eps(x_t, t, y) and eps(x_t, t, {}) at
once -- what classifier-free guidance needs (``guided``).  A fraction ``mask_all_fraction``
of the random masks covers the whole image, so an inpainting model also generates from
nothing.  Every draw (caption template, dropout, masks) comes from minidiff's generator, so a
resumed run stays exact.

**Classifier-free guidance** (Ho & Salimans 2022).  By Bayes' rule p(y | x_t) is proportional
to p(x_t | y) / p(x_t), so grad log p(y | x_t) = -(eps(x_t, y) - eps(x_t)) / sqrt(1 - abar_t)
(eps being -sqrt(1 - abar_t) times the score, lesson 08); the score of
p(x_t | y) p(y | x_t)^(s - 1) gives

    eps~ = eps(x_t, {}) + s (eps(x_t, y) - eps(x_t, {}))                          (11.4)

s = 0 is the unconditional model, s = 1 the conditional one, s > 1 pushes further towards y.
Ho & Salimans write eps~ = (1 + w) eps(x_t, y) - w eps(x_t, {}): their w is s - 1.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from minidiff import backend
from minidiff.data import to_unit_range
from minidiff.models.text_encoder import TextEncoder, key_mask
from minidiff.models.unet import UNet
from minidiff.nn.module import Module
from minidiff.ops import concatenate
from minidiff.tensor import Tensor
from minidiff.validation import MinidiffInputError

__all__ = ["CONDITIONINGS", "ConditionError", "ConditionedUNet", "build_model", "kind_of",
           "uses_text", "uses_concat", "Conditioner", "concat_input", "pixel_size",
           "sampling_cond", "double_cond", "guided", "conditional_eps_model",
           "ConditionedCheckpoint", "load_conditioned"]

CONDITIONINGS = ("none", "crossattn", "concat", "hybrid")


class ConditionError(MinidiffInputError):
    """A condition the model was not trained with, or a condition that is malformed."""


def kind_of(config: dict) -> str:
    """The config's conditioning (configs written before the key existed: "none")."""
    return config.get("conditioning", "none")


def uses_text(config: dict) -> bool:
    return kind_of(config) in ("crossattn", "hybrid")


def uses_concat(config: dict) -> bool:
    return kind_of(config) in ("concat", "hybrid")


class ConditionedUNet(Module):
    """eps_theta(x_t, t, cond): a ``UNet`` with, for text, its encoder tau_theta."""

    def __init__(self, unet: UNet, text_encoder: TextEncoder | None = None):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    @property
    def config(self):
        return self.unet.config

    def forward(self, x, t, cond=None):
        """x (N, C, H, W), t (N,), cond: {"tokens": (N, L) int, "concat": (N, c, h, w)} --
        the keys this model was trained with, each with N rows."""
        wants = (("tokens",) if self.text_encoder is not None else ()) + \
            (("concat",) if self.unet.config.concat_channels else ())
        if cond is None:
            raise ConditionError(f"model: conditioned on {list(wants)}; call it "
                                 "model(x_t, t, cond) with cond from "
                                 "minidiff.conditioning.sampling_cond")
        if not isinstance(cond, dict) or sorted(cond) != sorted(wants):
            raise ConditionError(f"model: cond must be a dict with the keys {list(wants)}, got "
                                 f"{sorted(cond) if isinstance(cond, dict) else cond!r}")
        n = x.shape[0]
        for key, value in cond.items():
            if value.shape[0] != n:
                raise ConditionError(f"model: cond[{key!r}] has {value.shape[0]} rows for "
                                     f"{n} images")
        context = mask = None
        if self.text_encoder is not None:
            context, mask = self.text_encoder(cond["tokens"]), key_mask(cond["tokens"])
        return self.unet(x, t, concat=cond.get("concat"), context=context, context_mask=mask)


def build_model(config: dict):
    """The network a diffusion config describes: a bare ``UNet`` (conditioning none, so every
    older checkpoint loads unchanged), else a ``ConditionedUNet``."""
    from minidiff.models.unet import UNetConfig  # noqa: PLC0415
    from minidiff.train.presets import model_config  # noqa: PLC0415
    kind = kind_of(config)
    if kind not in CONDITIONINGS:
        raise ConditionError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got "
                             f"{kind!r}")
    unet_config = model_config(config)
    if kind == "none":
        return UNet(unet_config)
    values = unet_config.to_dict()
    if uses_text(config):
        values["context_dim"] = int(config["context_dim"])
    if uses_concat(config):   # the mask and the space's encoding of the masked image
        values["concat_channels"] = 1 + int(config["in_channels"])
    unet = UNet(UNetConfig.from_dict(values))
    text_encoder = None
    if uses_text(config):
        from minidiff.captions import VOCABULARY  # noqa: PLC0415
        text_encoder = TextEncoder(len(VOCABULARY), int(config["context_dim"]),
                                   int(config["text_layers"]), int(config["text_heads"]),
                                   int(config["max_tokens"]))
    return ConditionedUNet(unet, text_encoder)


# ---------------------------------------------------------------------------------- inputs
def pixel_size(space) -> int:
    """The side of the images a space's x_0 stands for (28 for MNIST's latents)."""
    autoencoder = getattr(space, "autoencoder", None)
    return int(autoencoder.config.image_size) if autoencoder is not None else space.shape[-1]


def concat_input(space, images, masks):
    """``cond["concat"]`` = [m on the grid, E(masked image)] (N, 1 + C, h, w) for images in
    [-1, 1] (N, 1, 28, 28) and masks (N, 1, 28, 28), 1 = to fill.  The masked image has every
    pixel to fill set to 0 before it is encoded, so nothing under the mask gets through; a
    latent cell is to fill if any of its pixels is (``masks.mask_to_grid``)."""
    from minidiff.masks import mask_to_grid, masked_image  # noqa: PLC0415
    xp = backend.xp()
    images = backend.to_device(backend.array_of(images))
    masks = backend.to_device(backend.array_of(masks)).reshape(images.shape)
    known = space.encode(masked_image(images, masks), draw=False)
    grid = mask_to_grid(masks, known.shape[-1]).astype(known.dtype)
    return xp.concatenate([grid, known], axis=1)


class Conditioner:
    """Makes each training batch's ``cond`` for a conditioned config (a task holds one).

    Text: each image's caption from its label and its measured thickness and slant (the
    attribute edges -- tertiles -- measured once on the training set, kept in the checkpoint
    as ``captions.*``), a template drawn per item and step, the empty caption with
    probability ``caption_dropout``.  Concat: random masks (a fraction ``mask_all_fraction``
    covering everything), the mask on the grid and E(masked image) through ``space``."""

    def __init__(self, config: dict, images, labels, space):
        from minidiff import captions  # noqa: PLC0415
        self.config, self.images, self.space = config, images, space
        self.text, self.concat = uses_text(config), uses_concat(config)
        self.tokenizer = self.stats = None
        if self.text:
            if labels is None or len(labels) != len(images):
                raise ConditionError(f"conditioning {kind_of(config)}: captions need one label "
                                     f"per training image, got "
                                     f"{None if labels is None else len(labels)} for "
                                     f"{len(images)} images")
            self.labels = backend.host.asarray(labels)
            self.tokenizer = captions.Tokenizer(int(config["max_tokens"]))
            thickness = captions.measure_thickness(images)     # measured once, here
            slant = captions.measure_slant(images)
            self.stats = captions.CaptionStats(captions.tertile_edges(thickness),
                                               captions.tertile_edges(slant))
            self.thickness_words, self.slant_words = captions.attribute_words(
                thickness, slant, self.stats)

    def record(self) -> dict:
        """What the checkpoints keep: the caption statistics of the training set."""
        return self.stats.to_arrays() if self.stats is not None else {}

    def batch(self, index) -> dict:
        """``cond`` of the training images ``index`` (host indices); draws from minidiff's
        generator in a fixed order: caption templates, caption dropout, masks."""
        from minidiff import captions, masks  # noqa: PLC0415
        n, cond = len(index), {}
        if self.text:
            choice = backend.to_host(backend.randint(0, captions.N_CHOICES, (n,)))
            texts = captions.make_captions(self.labels[index], self.thickness_words[index],
                                           self.slant_words[index], choice)
            tokens = self.tokenizer.encode(texts)
            drop = backend.to_host(backend.rand(n)) < self.config["caption_dropout"]
            tokens[drop] = 0                      # the empty caption: all padding
            cond["tokens"] = backend.to_device(tokens)
        if self.concat:
            m = masks.random_masks(n, self.images.shape[-1], self.config["mask_all_fraction"],
                                   backend.rand(n, masks.MASK_DRAWS))
            cond["concat"] = concat_input(self.space, to_unit_range(self.images[index]), m)
        return cond


def double_cond(cond: dict, uncond: dict) -> dict:
    """[uncond; cond] along the batch axis, key by key: one forward for both halves."""
    xp = backend.xp()
    return {k: xp.concatenate([backend.array_of(uncond[k]), backend.array_of(cond[k])])
            for k in cond}


# ---------------------------------------------------------------------------------- sampling
def sampling_cond(config: dict, n: int, *, prompts=None, tokenizer=None, space=None,
                  images=None, masks=None):
    """``(cond, uncond)`` for sampling ``n`` images from a model conditioned as ``config``
    says.  ``prompts``: one caption per sample, or None (the empty caption: unconditional);
    ``images`` (N, 1, 28, 28) in [-1, 1] (or uint8) with ``masks`` (same shape, 1 = to fill)
    for a concat model: None generates from nothing (everything to fill).  uncond is cond with
    the empty caption (the concat input is kept: guidance is over the text only)."""
    cond = {}
    if prompts is not None and not uses_text(config):
        raise ConditionError(f"--prompt: this model is conditioned on {kind_of(config)!r}, not "
                             "on text; it takes no prompt")
    if images is not None and not uses_concat(config):
        raise ConditionError(f"--image/--mask: this model is conditioned on "
                             f"{kind_of(config)!r}; it was not trained to inpaint")
    if uses_text(config):
        prompts = [""] * n if prompts is None else list(prompts)
        if len(prompts) != n:
            raise ConditionError(f"--prompt: {len(prompts)} prompts for {n} samples")
        cond["tokens"] = backend.to_device(tokenizer.encode(prompts))
    if uses_concat(config):
        if (images is None) != (masks is None):
            raise ConditionError("--image/--mask: give both (the image and what to fill in "
                                 "it) or neither (generation from nothing)")
        if images is None:
            size = pixel_size(space)
            images = backend.xp().zeros((n, 1, size, size), dtype=backend.default_dtype())
            masks = backend.xp().ones((n, 1, size, size), dtype=backend.default_dtype())
        images = backend.array_of(images)
        if str(images.dtype) == "uint8":
            images = to_unit_range(images)
        if len(images) != n or masks is None or len(masks) != n:
            raise ConditionError(f"--image/--mask: expected {n} images and {n} masks, got "
                                 f"{len(images)} and {None if masks is None else len(masks)}")
        cond["concat"] = concat_input(space, images, masks)
    uncond = dict(cond)
    if "tokens" in cond:
        uncond["tokens"] = backend.xp().zeros_like(cond["tokens"])
    return cond, uncond


def conditional_eps_model(model, schedule, prediction: str):
    """``eps_model(x_t, t, cond)``: the conditioned network seen as eps_theta, whatever it
    predicts (eps, x_0 or v; ``as_eps_model``)."""
    from minidiff.diffusion import as_eps_model  # noqa: PLC0415

    def eps_model(x_t, t, cond):
        return as_eps_model(functools.partial(model, cond=cond), schedule, prediction)(x_t, t)
    return eps_model


def guided(eps_model, cond: dict, uncond: dict, scale: float):
    """The ``eps_model(x_t, t)`` of classifier-free guidance (11.4) for the samplers:
    one forward on the doubled batch [uncond; cond], then
    out = out_u + scale * (out_c - out_u) on the first C channels (C = x_t's channels; any
    further channels -- a learned variance -- are the conditional half's).
    ``eps_model(x_t, t, cond)`` is a conditional eps model (``conditional_eps_model``)."""
    both = double_cond(cond, uncond)

    def eps(x_t, t):
        n, c = x_t.shape[0], x_t.shape[1]
        xp = backend.xp()
        t = backend.to_device(backend.array_of(t))
        out = eps_model(concatenate([x_t, x_t]), xp.concatenate([t, t]), both)
        out = backend.array_of(out)
        out_u, out_c = out[:n], out[n:]
        mixed = out_u[:, :c] + scale * (out_c[:, :c] - out_u[:, :c])
        if out.shape[1] > c:
            mixed = xp.concatenate([mixed, out_c[:, c:]], axis=1)
        return Tensor(mixed)
    return eps


# ---------------------------------------------------------------------------------- checkpoints
@dataclass
class ConditionedCheckpoint:
    """What sampling, inpainting and evaluation need from a conditioned checkpoint."""
    model: Module                  # ConditionedUNet, eval mode, EMA (or raw) weights
    schedule: object               # NoiseSchedule
    config: dict
    space: object                  # PixelSpace or LatentSpace
    tokenizer: object | None       # captions.Tokenizer (text models)
    caption_stats: object | None   # captions.CaptionStats of the training set (text models)

    @property
    def eps_model(self):
        """``eps_model(x_t, t, cond)`` (``conditional_eps_model``)."""
        return conditional_eps_model(self.model, self.schedule,
                                     self.config.get("prediction", "eps"))

    def cond(self, n: int, prompts=None, images=None, masks=None):
        """``(cond, uncond)`` for ``n`` samples (``sampling_cond``)."""
        return sampling_cond(self.config, n, prompts=prompts, tokenizer=self.tokenizer,
                             space=self.space, images=images, masks=masks)

    def guided_eps(self, cond: dict, uncond: dict, scale: float | None = None):
        """The guided ``eps_model(x_t, t)`` for the samplers; ``scale`` defaults to the
        config's ``guidance``; a model without text is sampled with its cond only."""
        if "tokens" not in cond:
            eps = self.eps_model
            return lambda x_t, t: eps(x_t, t, cond)
        scale = float(self.config.get("guidance", 1.0)) if scale is None else float(scale)
        return guided(self.eps_model, cond, uncond, scale)


def load_conditioned(path, use_ema: bool = True, autoencoder: str | None = None,
                     arrays: dict | None = None) -> ConditionedCheckpoint:
    """Everything a conditioned checkpoint holds for sampling (``ConditionedCheckpoint``);
    ``autoencoder``: a latent model's autoencoder if not at the recorded path.  A checkpoint
    of an unconditioned model raises ``ConditionError``."""
    from minidiff.spaces import space_from_checkpoint  # noqa: PLC0415
    from minidiff.train.checkpoint import (load_checkpoint,  # noqa: PLC0415
                                           model_from_checkpoint, schedule_from_config)
    arrays = load_checkpoint(path) if arrays is None else arrays
    config = arrays["config"]
    if kind_of(config) == "none":
        raise ConditionError(f"{path}: an unconditioned model (conditioning 'none'); it takes "
                             "no prompt, image or mask")
    model, config = model_from_checkpoint(path, use_ema=use_ema, arrays=arrays)
    space = space_from_checkpoint(arrays, autoencoder)
    tokenizer = stats = None
    if uses_text(config):
        from minidiff import captions  # noqa: PLC0415
        tokenizer = captions.Tokenizer(int(config["max_tokens"]))
        stats = captions.CaptionStats.from_arrays(arrays)
    return ConditionedCheckpoint(model, schedule_from_config(config), config, space,
                                 tokenizer, stats)
