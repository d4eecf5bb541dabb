"""The multi-view UNet of LGM (Tang et al. 2024, "LGM: Large Multi-View Gaussian Model"), written
so that the published checkpoint's state-dict keys and shapes load unchanged.

Structure read from 3DTopia/LGM core/unet.py (commit be6a87f, unchanged to HEAD fe8d12c):
residual blocks GroupNorm -> SiLU -> (resample) -> 3x3 conv, twice, with a 1x1 shortcut when the
width changes and the sum scaled by ``skip_scale`` (sqrt(1/2)); self-attention over every pixel of
every view at once (GroupNorm, a bias-free ``qkv`` linear, ``proj`` linear, residual scaled by
``skip_scale``), 16 heads; down blocks end in a stride-2 3x3 conv, up blocks in nearest x2 + 3x3
conv, and take one more layer than the down blocks; the decoder may stop before the input size
(LGM 'big' ends at 128 px for 256 px views). Attention here is PyTorch's SDPA (LGM uses xformers'
memory-efficient attention, the same softmax(q k^T / sqrt(d)) v).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SKIP_SCALE = math.sqrt(0.5)  # LGM's UNet default skip_scale


class ViewAttention(nn.Module):
    """Self-attention across all pixels of the ``views`` views of one object (LGM's MVAttention;
    keys ``norm``, ``attn.qkv``, ``attn.proj``)."""

    def __init__(self, dim: int, heads: int, groups: int, views: int):
        super().__init__()
        self.heads, self.views = heads, views
        self.norm = nn.GroupNorm(groups, dim, eps=1e-5)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        bv, c, h, w = x.shape
        b = bv // self.views
        tokens = self.norm(x).reshape(b, self.views, c, h * w).permute(0, 1, 3, 2)
        tokens = tokens.reshape(b, self.views * h * w, c)
        qkv = self.attn.qkv(tokens).reshape(b, -1, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, tokens, head_dim] each
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.attn.proj(out.transpose(1, 2).reshape(b, -1, c))
        out = out.reshape(b, self.views, h * w, c).permute(0, 1, 3, 2).reshape(bv, c, h, w)
        return (out + x) * SKIP_SCALE


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus the (1x1 when the width changes) shortcut."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * SKIP_SCALE


def _attn_list(n: int, on: bool, dim: int, heads: int, groups: int, views: int) -> nn.ModuleList:
    """``n`` attention layers, or ``n`` empty slots (keys keep LGM's per-layer index)."""
    return nn.ModuleList(
        [ViewAttention(dim, heads, groups, views) if on else None for _ in range(n)]
    )


class DownBlock(nn.Module):
    def __init__(self, cin, cout, layers, down, attention, heads, groups, views):
        super().__init__()
        self.nets = nn.ModuleList(
            [ResBlock(cin if i == 0 else cout, cout, groups) for i in range(layers)]
        )
        self.attns = _attn_list(layers, attention, cout, heads, groups, views)
        self.downsample = nn.Conv2d(cout, cout, 3, stride=2, padding=1) if down else None

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for net, attn in zip(self.nets, self.attns):
            x = net(x)
            x = attn(x) if attn is not None else x
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """res, (attention, res): LGM's mid block with one layer."""

    def __init__(self, dim, attention, heads, groups, views):
        super().__init__()
        self.nets = nn.ModuleList([ResBlock(dim, dim, groups), ResBlock(dim, dim, groups)])
        self.attns = _attn_list(1, attention, dim, heads, groups, views)

    def forward(self, x: Tensor) -> Tensor:
        x = self.nets[0](x)
        attn = self.attns[0]
        x = attn(x) if attn is not None else x
        return self.nets[1](x)


class UpBlock(nn.Module):
    def __init__(self, cin, cskip, cout, layers, up, attention, heads, groups, views):
        super().__init__()
        nets = []
        for i in range(layers):
            skip = cskip if i == layers - 1 else cout
            nets.append(ResBlock((cin if i == 0 else cout) + skip, cout, groups))
        self.nets = nn.ModuleList(nets)
        self.attns = _attn_list(layers, attention, cout, heads, groups, views)
        self.upsample = nn.Conv2d(cout, cout, 3, padding=1) if up else None

    def forward(self, x: Tensor, skips: list[Tensor]) -> Tensor:
        for net, attn in zip(self.nets, self.attns):
            x = net(torch.cat([x, skips.pop()], dim=1))
            x = attn(x) if attn is not None else x
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class LGMUNet(nn.Module):
    """Views [B*V, 9, H, W] -> features [B*V, out, H', W'] (H' = H * 2^(len(up)-len(down)))."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        down_channels: list[int],
        down_attention: list[bool],
        mid_attention: bool,
        up_channels: list[int],
        up_attention: list[bool],
        layers_per_block: int = 2,
        heads: int = 16,
        groups: int = 32,
        views: int = 4,
    ):
        super().__init__()
        kw = dict(heads=heads, groups=groups, views=views)
        self.conv_in = nn.Conv2d(in_channels, down_channels[0], 3, padding=1)
        blocks, cout = [], down_channels[0]
        for i, (ch, att) in enumerate(zip(down_channels, down_attention)):
            last = i == len(down_channels) - 1
            blocks.append(DownBlock(cout, ch, layers_per_block, not last, att, **kw))
            cout = ch
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(down_channels[-1], mid_attention, **kw)
        blocks, cout = [], up_channels[0]
        for i, (ch, att) in enumerate(zip(up_channels, up_attention)):
            cskip = down_channels[max(-2 - i, -len(down_channels))]
            up = i != len(up_channels) - 1
            blocks.append(UpBlock(cout, cskip, ch, layers_per_block + 1, up, att, **kw))
            cout = ch
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(groups, up_channels[-1], eps=1e-5)
        self.conv_out = nn.Conv2d(up_channels[-1], out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x)
            skips.extend(s)
        x = self.mid_block(x)
        for block in self.up_blocks:
            n = len(block.nets)
            x = block(x, skips[-n:])
            skips = skips[:-n]
        return self.conv_out(F.silu(self.norm_out(x)))
