"""The MVDream / ImageDream multi-view UNet, written for the published diffusers folders.

Facts read from ashawkey/mvdream_diffusers (mv_unet.py at commit 8b318ef, the code the published
folders ``ashawkey/mvdream-sd2.1-diffusers`` and ``ashawkey/imagedream-ipmv-diffusers`` load
with) and bytedance/MVDream (mvdream/configs/sd-v2-base.yaml); this file is our own code:
  - the views are a batch of ``num_frames`` images; every transformer block's self-attention
    runs over the tokens of all frames of one object together, its cross-attention per frame;
  - the time embedding (sinusoid, cos half first, ``model_channels`` wide, then a 2-layer MLP to
    4 x ``model_channels``) has the camera MLP of each frame's flattened 4x4 camera-to-world
    matrix added to it (``camera_dim`` = 16);
  - ImageDream (``ip_dim`` > 0): a perceiver resampler turns CLIP image tokens into ``ip_dim``
    extra context tokens, which every cross-attention reads through its own ``to_k_ip`` /
    ``to_v_ip`` and adds (times ``ip_weight``) to the text attention; the last frame of each
    object is replaced by the clean condition latent (``ip_img``);
  - module and parameter names equal the published ones, so a published state dict loads as is.
The published class hard-codes GroupNorm(32), the resampler's width (12 heads of 64) and its
input width (1280, CLIP ViT-H/14); the input width is a constructor argument here
(``ip_embedding_dim``, not saved in config.json) so that tiny fixtures can use a small encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from teachers.mv_layers import Resampler, heads_join, heads_split

GROUPS = 32  # GroupNorm groups everywhere in the published UNet


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [N, dim] of (fractional) timesteps: cosines first, then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class Attention(nn.Module):
    """Attention without biases on q/k/v; optional image-prompt keys/values (``ip_dim`` > 0)
    read from the last ``ip_dim`` context tokens and added to the output."""

    def __init__(
        self,
        dim: int,
        context_dim: int,
        heads: int,
        dim_head: int,
        ip_dim: int = 0,
        ip_weight: float = 1.0,
    ):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.ip_dim, self.ip_weight = heads, ip_dim, ip_weight
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        if ip_dim > 0:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        h = self.heads
        return F.scaled_dot_product_attention(
            heads_split(q, h), heads_split(k, h), heads_split(v, h)
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q = self.to_q(x)
        ip = None
        if self.ip_dim > 0:
            context, ip = context[:, : -self.ip_dim], context[:, -self.ip_dim :]
        out = self._attend(q, self.to_k(context), self.to_v(context))
        if ip is not None:
            out = out + self.ip_weight * self._attend(q, self.to_k_ip(ip), self.to_v_ip(ip))
        return self.to_out(heads_join(out))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(
            GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock3D(nn.Module):
    """Self-attention over all frames of an object, cross-attention per frame, GEGLU MLP."""

    def __init__(
        self, dim: int, heads: int, dim_head: int, context_dim: int, ip_dim: int, ip_weight: float
    ):
        super().__init__()
        self.attn1 = Attention(dim, dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, context_dim, heads, dim_head, ip_dim, ip_weight)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        bf, n, c = x.shape
        joint = x.reshape(bf // num_frames, num_frames * n, c)  # one token sequence per object
        joint = joint + self.attn1(self.norm1(joint))
        x = joint.reshape(bf, n, c)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer3D(nn.Module):
    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        context_dim: int,
        depth: int,
        ip_dim: int,
        ip_weight: float,
    ):
        super().__init__()
        inner = heads * dim_head
        if inner != channels:
            raise ValueError(f"attention width {heads}x{dim_head} must equal channels {channels}")
        self.norm = nn.GroupNorm(GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock3D(inner, heads, dim_head, context_dim, ip_dim, ip_weight)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            y = block(y, context, num_frames)
        return x + self.proj_out(y).transpose(1, 2).reshape(b, c, h, w)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(GROUPS, channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(GROUPS, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb).to(x.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class CondSequential(nn.Sequential):
    """Layers that take the embedding (ResBlock) or the context (SpatialTransformer3D)."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, num_frames: int) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer3D):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


# config.json keys: built from, ignored (training-only or implied), or refused unless at default
BUILD_KEYS = (
    "image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks",
    "attention_resolutions", "channel_mult", "num_heads", "num_head_channels",
    "transformer_depth", "context_dim", "camera_dim", "ip_dim", "ip_weight", "dropout",
)  # fmt: skip
IGNORED_KEYS = ("use_checkpoint", "frame_num")  # gradient checkpointing; ImageDream's 4 + 1 frames
DEFAULT_ONLY = {
    "dims": 2, "conv_resample": True, "num_classes": None, "use_scale_shift_norm": False,
    "resblock_updown": False, "n_embed": None, "num_attention_blocks": None,
    "adm_in_channels": None, "num_heads_upsample": -1,
}  # fmt: skip


def build_kwargs(config: dict, where: str = "unet/config.json") -> dict:
    """The constructor arguments of a published config; unknown keys or settings this code does
    not implement are a ValueError that names them."""
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(cfg) - set(BUILD_KEYS) - set(IGNORED_KEYS) - set(DEFAULT_ONLY))
    if unknown:
        raise ValueError(f"{where}: unknown MultiViewUNetModel config keys {unknown}")
    bad = [f"{k}={cfg[k]!r}" for k, d in DEFAULT_ONLY.items() if k in cfg and cfg[k] != d]
    if bad:
        raise ValueError(f"{where}: unsupported MultiViewUNetModel settings {', '.join(bad)}")
    if cfg.get("context_dim") is None:
        raise ValueError(f"{where}: context_dim is required (the text encoder's width)")
    return {k: cfg[k] for k in BUILD_KEYS if k in cfg}


class MultiViewUNetModel(ModelMixin, ConfigMixin):
    """``unet(x [(B F), C, h, w], timesteps [(B F)], context [(B F), L, D], camera [(B F), 16],
    num_frames=F, ip [(B F), N, E], ip_img [B, C, h, w], added_emb [(B F), 4 mc])``.

    Build it with ``from_published(config)``: the config it was built from (the published keys
    only) is what ``save_pretrained`` writes, as the published conversion registered it."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks,
        attention_resolutions,
        channel_mult=(1, 2, 4, 8),
        num_heads: int = -1,
        num_head_channels: int = -1,
        transformer_depth: int = 1,
        context_dim: int = 1024,
        camera_dim: int | None = None,
        ip_dim: int = 0,
        ip_weight: float = 1.0,
        dropout: float = 0.0,
        ip_embedding_dim: int = 1280,
    ):
        super().__init__()
        nrb = (
            [num_res_blocks] * len(channel_mult)
            if isinstance(num_res_blocks, int)
            else num_res_blocks
        )
        self.model_channels, self.ip_dim = model_channels, ip_dim
        ted = model_channels * 4
        if ip_dim > 0:
            self.image_embed = Resampler(context_dim, ip_dim, ip_embedding_dim, context_dim)
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, ted), nn.SiLU(), nn.Linear(ted, ted)
        )
        if camera_dim is not None:
            self.camera_embed = nn.Sequential(
                nn.Linear(camera_dim, ted), nn.SiLU(), nn.Linear(ted, ted)
            )

        def attn(ch: int) -> SpatialTransformer3D:
            heads = ch // num_head_channels if num_head_channels != -1 else num_heads
            return SpatialTransformer3D(
                ch, heads, ch // heads, context_dim, transformer_depth, ip_dim, ip_weight
            )

        self.input_blocks = nn.ModuleList(
            [CondSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))]
        )
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(nrb[level]):
                layers = [ResBlock(ch, ted, mult * model_channels, dropout)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(CondSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(CondSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = CondSequential(
            ResBlock(ch, ted, ch, dropout), attn(ch), ResBlock(ch, ted, ch, dropout)
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(nrb[level] + 1):
                layers = [ResBlock(ch + chans.pop(), ted, model_channels * mult, dropout)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                if level and i == nrb[level]:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(CondSequential(*layers))
        self.out = nn.Sequential(
            nn.GroupNorm(GROUPS, ch),
            nn.SiLU(),
            nn.Conv2d(model_channels, out_channels, 3, padding=1),
        )

    @classmethod
    def from_published(cls, config: dict, ip_embedding_dim: int = 1280) -> MultiViewUNetModel:
        """A model of a published config (keys checked); its config is exactly those keys."""
        model = cls(**build_kwargs(config), ip_embedding_dim=ip_embedding_dim)
        model.register_to_config(**{k: v for k, v in config.items() if not k.startswith("_")})
        return model

    @property
    def time_embed_dim(self) -> int:
        return self.time_embed[2].out_features

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, camera: Tensor | None = None,
                num_frames: int = 1, ip: Tensor | None = None, ip_img: Tensor | None = None,
                added_emb: Tensor | None = None) -> Tensor:  # fmt: skip
        if x.shape[0] % num_frames:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of num_frames={num_frames}")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if camera is not None:
            emb = emb + self.camera_embed(camera)
        if added_emb is not None:
            emb = emb + added_emb
        if self.ip_dim > 0:
            if ip is None or ip_img is None:
                raise ValueError("ImageDream needs the image tokens (ip) and latent (ip_img)")
            frames = x.unflatten(0, (-1, num_frames))  # the last frame is the condition latent
            x = torch.cat([frames[:, :-1], ip_img[:, None].to(x)], dim=1).flatten(0, 1)
            context = torch.cat([context, self.image_embed(ip)], dim=1)
        h, hs = x, []
        for module in self.input_blocks:
            h = module(h, emb, context, num_frames)
            hs.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context, num_frames)
        return self.out(h)
