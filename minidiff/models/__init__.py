"""Networks built from ``minidiff.nn``: the DDPM U-Net (lesson 06)."""
from minidiff.models.blocks import AttentionBlock, Downsample, ResBlock, Upsample
from minidiff.models.embedding import timestep_embedding
from minidiff.models.unet import REFERENCE_CONFIG, UNet, UNetConfig

__all__ = ["UNet", "UNetConfig", "REFERENCE_CONFIG", "ResBlock", "AttentionBlock",
           "Downsample", "Upsample", "timestep_embedding"]
