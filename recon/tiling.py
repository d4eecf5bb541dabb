"""Views tiled into one grid image (Instant3D 2x2, Zero123++ 3x2) and back."""

from __future__ import annotations

from diffusers import UNet2DModel
from torch import Tensor


def tile_views(x: Tensor, rows: int, cols: int) -> Tensor:
    """[B, V, C, h, w] -> [B, C, rows*h, cols*w] (row-major, as Instant3D / Zero++ tile)."""
    b, v, c, h, w = x.shape
    if v != rows * cols:
        raise ValueError(f"{v} views do not fill a {rows}x{cols} grid")
    return (
        x.reshape(b, rows, cols, c, h, w)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(b, c, rows * h, cols * w)
    )


def untile_views(x: Tensor, rows: int, cols: int) -> Tensor:
    """[B, C, rows*h, cols*w] -> [B, V, C, h, w]."""
    b, c, hh, ww = x.shape
    h, w = hh // rows, ww // cols
    return (
        x.reshape(b, c, rows, h, cols, w).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c, h, w)
    )


def grid_unet(
    sample_size: int,
    in_channels: int,
    out_channels: int,
    channels: list[int],
    attention: list[bool],
    layers_per_block: int,
    head_dim: int,
    norm_groups: int,
    class_embed_type: str | None = None,
) -> UNet2DModel:
    """A diffusers UNet2DModel for a tiled view grid; ``attention`` marks the levels with
    self-attention (which then spans every view of the grid)."""
    if len(channels) != len(attention):
        raise ValueError("channels and attention must list the same number of UNet levels")
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=tuple(channels),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in attention[::-1]),
        layers_per_block=layers_per_block,
        attention_head_dim=head_dim,
        norm_num_groups=norm_groups,
        class_embed_type=class_embed_type,
    )
