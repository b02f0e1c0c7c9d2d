"""The names a configuration may use, each spelled once (the modules that define the maths
own their vocabularies: ``diffusion.PREDICTIONS``, ``VARIANCES``, ``OBJECTIVES``,
``T_SAMPLERS``, ``SAMPLERS``, ``SCHEDULES``; this module adds the conditioning switch of
lesson 11 and the model families).

    conditioning   the U-Net's input                        what ``cond`` holds
    none           eps_theta(x_t, t)                        nothing
    crossattn      eps_theta(x_t, t, tau_theta(y))          "tokens" (N, L) int64
    concat         eps_theta([x_t, m, E(x_known)], t)       "concat" (N, 1 + C, h, w)
    hybrid         both                                     "tokens" and "concat"
"""
from __future__ import annotations

__all__ = ["CONDITIONINGS", "MODELS", "kind_of", "uses_text", "uses_concat"]


#: what a diffusion model is conditioned on (its ``conditioning`` key)
CONDITIONINGS = ("none", "crossattn", "concat", "hybrid")
#: what a config can train (its ``model`` key)
MODELS = ("unet", "autoencoder")


def kind_of(config: dict) -> str:
    """The config's conditioning: none, crossattn, concat or hybrid."""
    return config["conditioning"]


def uses_text(config: dict) -> bool:
    """Whether the model reads a caption (cond["tokens"])."""
    return kind_of(config) in ("crossattn", "hybrid")


def uses_concat(config: dict) -> bool:
    """Whether the model is given a mask and a masked image as extra channels (cond["concat"])."""
    return kind_of(config) in ("concat", "hybrid")
