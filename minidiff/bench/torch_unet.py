"""The reference U-Net (``minidiff.models.UNet``) written again in PyTorch, for the benchmark.

Only the benchmark and its test use this module, and only where ``torch`` imports: PyTorch is
never a dependency of minidiff.  ``torch_twin(model)`` builds a ``torch.nn.Module`` with the
same architecture *and the same parameter names* as the minidiff model and copies the weights
across, so both networks compute the same function; ``max_abs_diff`` checks that they do.

Architecture mirrored from ``minidiff/models/unet.py`` and ``blocks.py``: sinusoidal
embedding [cos | sin] (6.1) -> Linear -> SiLU -> Linear; ResBlocks GN-SiLU-conv, + emb
projection, GN-SiLU-dropout-conv, + skip; attention over pixels with a fused qkv 1x1 conv and
``scaled_dot_product_attention``; stride-2 conv down, nearest x2 + conv up.
"""
from __future__ import annotations

import math

from minidiff import backend
from minidiff.tensor import Tensor, no_grad

__all__ = ["torch_available", "torch_twin", "max_abs_diff"]


def torch_available() -> bool:
    try:
        import torch  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _classes():
    import torch  # noqa: PLC0415  (optional: only the benchmark calls this)
    from torch import nn  # noqa: PLC0415
    fn = torch.nn.functional

    def timestep_embedding(t, dim):
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
        angles = t.to(torch.float64)[:, None] * freqs[None, :]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(torch.float32)

    class ResBlock(nn.Module):
        def __init__(self, cin, cout, emb_dim, groups, dropout):
            super().__init__()
            self.out_channels = cout
            self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5)
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
            self.emb_proj = nn.Linear(emb_dim, cout)
            self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5)
            self.dropout = nn.Dropout(dropout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

        def forward(self, x, emb):
            h = self.conv1(fn.silu(self.norm1(x)))
            h = h + self.emb_proj(fn.silu(emb))[:, :, None, None]
            h = self.conv2(self.dropout(fn.silu(self.norm2(h))))
            return self.skip(x) + h

    class AttentionBlock(nn.Module):
        def __init__(self, channels, heads, groups):
            super().__init__()
            self.heads = heads
            self.norm = nn.GroupNorm(groups, channels, eps=1e-5)
            self.qkv = nn.Conv2d(channels, 3 * channels, 1)
            self.proj_out = nn.Conv2d(channels, channels, 1)

        def forward(self, x):
            b, c, height, width = x.shape
            d = c // self.heads
            qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, height * width)
            qkv = qkv.permute(1, 0, 2, 4, 3)
            o = fn.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            o = o.permute(0, 1, 3, 2).reshape(b, c, height, width)
            return x + self.proj_out(o)

    class Level(nn.Module):
        def __init__(self, blocks, attentions):
            super().__init__()
            self.blocks = nn.ModuleList(blocks)
            self.attentions = nn.ModuleList(attentions)

    class Down(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

        def forward(self, x):
            return self.conv(x)

    class Up(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

        def forward(self, x):
            return self.conv(fn.interpolate(x, scale_factor=2, mode="nearest"))

    class TorchUNet(nn.Module):
        def __init__(self, c):
            super().__init__()
            if c.concat_channels or c.context_dim:
                raise ValueError("torch twin: concat/context conditioning is not mirrored")
            self.config = c
            emb_dim = 4 * c.base_channels
            self.time_mlp1 = nn.Linear(c.time_embed_dim, emb_dim)
            self.time_mlp2 = nn.Linear(emb_dim, emb_dim)
            self.conv_in = nn.Conv2d(c.in_channels * c.patch_size ** 2, c.base_channels, 3,
                                     padding=1)

            def block(cin, cout):
                return ResBlock(cin, cout, emb_dim, c.groups, c.dropout)

            def attention(channels, resolution):
                if resolution in c.attention_resolutions:
                    return AttentionBlock(channels, c.num_heads, c.groups)
                return None

            skips, channels = [c.base_channels], c.base_channels
            resolution = c.image_size // c.patch_size
            down, downsamples = [], []
            for level, mult in enumerate(c.channel_mults):
                blocks, attns = [], []
                for _ in range(c.num_res_blocks):
                    blocks.append(block(channels, mult * c.base_channels))
                    channels = mult * c.base_channels
                    attns.append(attention(channels, resolution))
                    skips.append(channels)
                down.append(Level(blocks, [a for a in attns if a is not None]))
                if level < len(c.channel_mults) - 1:
                    downsamples.append(Down(channels))
                    skips.append(channels)
                    resolution //= 2
            self.down = nn.ModuleList(down)
            self.downsamples = nn.ModuleList(downsamples)
            self.mid_block1 = block(channels, channels)
            self.mid_attention = AttentionBlock(channels, c.num_heads, c.groups)
            self.mid_block2 = block(channels, channels)
            up, upsamples = [], []
            for level, mult in reversed(list(enumerate(c.channel_mults))):
                blocks, attns = [], []
                for _ in range(c.num_res_blocks + 1):
                    blocks.append(block(channels + skips.pop(), mult * c.base_channels))
                    channels = mult * c.base_channels
                    attns.append(attention(channels, resolution))
                up.append(Level(blocks, [a for a in attns if a is not None]))
                if level > 0:
                    upsamples.append(Up(channels))
                    resolution *= 2
            self.up = nn.ModuleList(up)
            self.upsamples = nn.ModuleList(upsamples)
            self.norm_out = nn.GroupNorm(c.groups, channels, eps=1e-5)
            self.conv_out = nn.Conv2d(channels, c.out_channels * c.patch_size ** 2, 3,
                                      padding=1)

        @staticmethod
        def _run_level(level, h, emb, skips=None, stored=None):
            attentions = iter(level.attentions)
            has_attention = len(level.attentions) > 0
            for block in level.blocks:
                if skips is not None:
                    h = torch.cat([h, skips.pop()], dim=1)
                h = block(h, emb)
                if has_attention:
                    h = next(attentions)(h)
                if stored is not None:
                    stored.append(h)
            return h

        def forward(self, x, t):
            emb = timestep_embedding(t, self.config.time_embed_dim)
            emb = self.time_mlp2(fn.silu(self.time_mlp1(emb)))
            patch = self.config.patch_size
            h = self.conv_in(fn.pixel_unshuffle(x, patch) if patch > 1 else x)
            skips = [h]
            for i, level in enumerate(self.down):
                h = self._run_level(level, h, emb, stored=skips)
                if i < len(self.downsamples):
                    h = self.downsamples[i](h)
                    skips.append(h)
            h = self.mid_block2(self.mid_attention(self.mid_block1(h, emb)), emb)
            for i, level in enumerate(self.up):
                h = self._run_level(level, h, emb, skips=skips)
                if i < len(self.upsamples):
                    h = self.upsamples[i](h)
            out = self.conv_out(fn.silu(self.norm_out(h)))
            return fn.pixel_shuffle(out, patch) if patch > 1 else out

    return torch, TorchUNet


def torch_twin(model):
    """A ``torch.nn.Module`` equal to the minidiff ``UNet`` ``model`` (weights copied).

    Raises ImportError when torch is missing and KeyError when the parameter names differ."""

    torch, TorchUNet = _classes()
    twin = TorchUNet(model.config)
    ours = dict(model.named_parameters())
    theirs = dict(twin.named_parameters())
    if set(ours) != set(theirs):
        raise KeyError(f"torch twin: parameter names differ: "
                       f"{sorted(set(ours) ^ set(theirs))[:5]}")
    with torch.no_grad():
        for name, p in theirs.items():
            value = torch.from_numpy(backend.to_host(ours[name].data).copy()).to(p.dtype)
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"torch twin: {name} has shape {tuple(value.shape)} here, "
                                 f"{tuple(p.shape)} there")
            p.copy_(value)
    return twin


def max_abs_diff(model, twin, x, t) -> float:
    """max |model(x, t) - twin(x, t)| for host arrays ``x`` (float32) and ``t`` (int64)."""

    torch, _ = _classes()
    with no_grad():
        ours = backend.to_host(model(Tensor(backend.to_device(x)), backend.to_device(t)).data)
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    return float(abs(ours.astype("float64") - theirs.astype("float64")).max())
