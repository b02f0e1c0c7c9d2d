"""The conditioned network eps_theta(x_t, t, cond) of lesson 11, in the spirit of CompVis'
``DiffusionWrapper``: one type for every conditioning kind (``config.vocabulary``).

    conditioning   the U-Net's input                        what ``cond`` holds
    none           eps_theta(x_t, t)                        nothing: {} (or None)
    crossattn      eps_theta(x_t, t, tau_theta(y))          "tokens" (N, L) int64
    concat         eps_theta([x_t, m, E(x_known)], t)       "concat" (N, 1 + C, h, w)
    hybrid         both                                     "tokens" and "concat"

* Text y (a caption, ``data.captions``) goes through the transformer tau_theta
  (``TextEncoder``) to a sequence that the U-Net's ``SpatialTransformer`` blocks cross-attend
  to (context_dim wide).
* Spatial inputs are concatenated to x_t as extra channels: for inpainting the mask m
  (1 = to fill) on the space's grid (28x28 pixels or the 7x7 latent grid), and the space's
  encoding of the masked image x_known (every pixel to fill set to 0, ``data.masks``), so no
  pixel under the mask reaches the network (``pipelines.conditions.concat_input``).

How each training batch's cond is drawn: ``train.conditioner``; classifier-free guidance
(11.4): ``diffusion.guidance``; the network a config describes: ``config.build.build_model``.
"""
from __future__ import annotations

from minidiff.errors import MinidiffInputError
from minidiff.models.text_encoder import TextEncoder, key_mask
from minidiff.models.unet import UNet
from minidiff.nn.module import Module

__all__ = ["ConditionError", "ConditionedUNet"]


class ConditionError(MinidiffInputError):
    """A condition the model was not trained with, or a condition that is malformed."""


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
        if cond is None and not wants:
            cond = {}
        if cond is None:
            raise ConditionError(f"model: conditioned on {list(wants)}; give it "
                                 "a cond (minidiff sample --prompt, minidiff inpaint, "
                                 "minidiff eval --prompts)")
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


