"""Networks built from ``minidiff.nn``: the DDPM U-Net (lesson 06) and the KL autoencoder
(lesson 09), and the text encoder tau_theta of lesson 11."""
from minidiff.models.autoencoder import AutoencoderConfig, AutoencoderKL
from minidiff.models.blocks import (AttentionBlock, Downsample, ResBlock, SpatialTransformer,
                                    Upsample)
from minidiff.models.distributions import DiagonalGaussian
from minidiff.models.embedding import timestep_embedding
from minidiff.models.text_encoder import TextEncoder
from minidiff.models.unet import REFERENCE_CONFIG, UNet, UNetConfig

__all__ = ["UNet", "UNetConfig", "REFERENCE_CONFIG", "ResBlock", "AttentionBlock",
           "SpatialTransformer", "TextEncoder", "Downsample", "Upsample", "timestep_embedding",
           "AutoencoderKL", "AutoencoderConfig", "DiagonalGaussian"]
