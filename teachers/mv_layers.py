"""Small layers of the MVDream / ImageDream UNet (teachers/mv_unet.py): head split and join, and
ImageDream's perceiver resampler of CLIP image tokens (IP-Adapter-plus layout; the published
class hard-codes 4 layers of 12 heads of 64 and a 4x feed-forward)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RESAMPLER = {"depth": 4, "heads": 12, "dim_head": 64, "ff_mult": 4}  # published constants


def heads_split(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).transpose(1, 2)


def heads_join(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class PerceiverAttention(nn.Module):
    """Latents attend to [image tokens; latents] (IP-Adapter-plus resampler layer)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (heads_split(z, self.heads) for z in (self.to_q(latents), k, v))
        return self.to_out(heads_join(F.scaled_dot_product_attention(q, k, v)))


class Resampler(nn.Module):
    def __init__(self, dim: int, num_queries: int, embedding_dim: int, output_dim: int):
        super().__init__()
        depth, heads, dim_head, mult = (
            RESAMPLER[k] for k in ("depth", "heads", "dim_head", "ff_mult")
        )
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, dim_head, heads),
                nn.Sequential(
                    nn.LayerNorm(dim),
                    nn.Linear(dim, dim * mult, bias=False),
                    nn.GELU(),
                    nn.Linear(dim * mult, dim, bias=False),
                ),
            ])
            for _ in range(depth)
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        latents = self.latents.expand(x.shape[0], -1, -1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm_out(self.proj_out(latents))
