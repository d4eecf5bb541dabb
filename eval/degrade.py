"""Controlled degradations of a set of target views (the truth's or a model's outputs): noise,
blur, colour shift, and back, collapse and view-consistency failures on a share of the objects,
at the calibration's levels (eval/calibrate.py)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scenes.objects import make_object
from scenes.rig import make_rig, render_views
from scenes.world import BACK_PATTERNS, WorldConfig, back_classes


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    flat = x.reshape(-1, 1, *x.shape[-2:])
    pad = torch.nn.functional.pad(flat, (r, r, r, r), mode="replicate")
    out = torch.nn.functional.conv2d(pad, k.reshape(1, 1, 1, -1))
    out = torch.nn.functional.conv2d(out, k.reshape(1, 1, -1, 1))
    return out.reshape(x.shape)


def add_noise(x: Tensor, std: float, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + 2 * std * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def colour_shift(x: Tensor, s: float, mask: Tensor) -> Tensor:
    shift = torch.tensor([2 * s, 0.0, -2 * s]).reshape(3, 1, 1)
    return torch.where(mask[..., None, :, :], (x + shift).clamp(-1, 1), x)


def other_back(cls: int) -> int:
    """A back class of another colour (same pattern): a plausible alternative unseen side."""
    return (cls + len(BACK_PATTERNS)) % len(back_classes())


def render_with_backs(seeds: list[int], backs: list[int], world: WorldConfig) -> Tensor:
    """Target views [B, V, 3, H, W] of the same objects painted with the given back classes."""
    rig = make_rig(world)
    out = []
    for s, b in zip(seeds, backs):
        g = make_object(s, world, back=b)
        out.append(render_views(g, rig.target_viewmats, rig.K, rig.size))
    return torch.stack(out)


def with_share(views: Tensor, other: Tensor, share: float) -> Tensor:
    """``views`` with its last ceil(share x objects) objects taken from ``other`` (the last, so
    that collapsing onto object 0's back class changes as many objects as it says)."""
    n = views.shape[0]
    k = min(n, math.ceil(share * n))
    out = views.clone()
    out[n - k :] = other[n - k :]
    return out


def degradations(cfg, base: Tensor, truth, seeds, world, obj_mask):
    """(kind, level, views) for every controlled degradation of ``base`` (the true target views,
    or a model's outputs for the same objects), at ``cfg``'s levels (noise, blur, colour,
    failure_shares); ``truth``: the objects' Truth (targets, back classes). Back failures move
    base's pixels by the change the failure makes to the true views, so on the truth they are
    the failure itself."""
    gt = truth.targets
    for s in cfg.noise:
        yield "noise", s, add_noise(base, s)
    for s in cfg.blur:
        yield "blur", s, gaussian_blur(base, s)
    for s in cfg.colour:
        yield "colour", s, colour_shift(base, s, obj_mask)
    backs = truth.back_class.tolist()
    alt = render_with_backs(seeds, [other_back(b) for b in backs], world)
    col = render_with_backs(seeds, [backs[0]] * len(seeds), world)
    averaged = (base + (alt - gt) / 2).clamp(-1, 1)  # on the truth: the mean of two backs
    collapsed = (base + (col - gt)).clamp(-1, 1)
    inc = base.clone()
    inc[:, 1] = base.roll(1, dims=0)[:, 1]  # view 1 from another object
    for s in cfg.failure_shares:
        yield "averaging", s, with_share(base, averaged, s)
    for s in cfg.failure_shares:
        yield "collapse", s, with_share(base, collapsed, s)
    for s in cfg.failure_shares:
        yield "inconsistency", s, with_share(base, inc, s)
