"""The unseen-side distribution (world version 2): read the back class of each generated back
view and compare the distribution of what was read with the known true one.

The reader is fixed, not learned: a pixel belongs to a back colour when its chromaticity
(rgb / sum, invariant to the baked shading) lies near that colour's and it is saturated enough;
it is a stripe when it is dark. The object's colour is the back colour covering most of its
coloured pixels, its pattern follows from the share of dark pixels. A back whose winning colour
covers too little of the object, or whose dark share lies between plain and striped, is
*unreadable*: what a washed-out average of several plausible backs looks like.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scenes.world import BACK_COLOURS, back_class_probs, back_classes

BACK_VIEW = 2  # index of the target view that looks at the back (azimuth 180)
UNREADABLE = -1

# reader thresholds (checked on true renders of the test split by the calibration)
OBJECT_MIN_DARKNESS = 0.12  # 1 - min channel above this: an object pixel, not white
SMOOTH = True
DARK_MAX = 0.3  # max channel below this: a stripe pixel
SATURATION_MIN = 0.45  # (max - min) / max above this: a coloured pixel
CHROMA_RADIUS = 0.14  # chromaticity distance to a back colour
PURITY_MIN = 0.6  # the winning colour's share of the pixels near any back colour
COVER_MIN = 0.3  # winning colour + stripe pixels: at least this share of the object's pixels
MIN_PIXELS = 6  # fewer winning pixels: unreadable
PLAIN_MAX = 0.12  # dark share at most this: plain
STRIPED_MIN = 0.2  # dark share at least this: striped


def _chroma(rgb: Tensor) -> Tensor:
    return rgb / rgb.sum(-1, keepdim=True).clamp_min(1e-6)


def read_backs(views: Tensor) -> Tensor:
    """Back class index per image ([N, 3, H, W] in [-1, 1]) or ``UNREADABLE`` (-1): [N]."""
    x = ((views.float() + 1) / 2).clamp(0, 1)
    if SMOOTH:  # a 3x3 mean first: pixel noise averages out, 2-3 px stripes survive
        x = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    rgb = x.movedim(-3, -1)  # [N, H, W, 3]
    mx, mn = rgb.max(-1).values, rgb.min(-1).values
    obj = (1 - mn) > OBJECT_MIN_DARKNESS  # not the white background
    dark = obj & (mx < DARK_MAX)
    sat = (mx - mn) / mx.clamp_min(1e-6)
    coloured = obj & ~dark & (sat > SATURATION_MIN)
    palette = _chroma(torch.tensor(list(BACK_COLOURS.values())))  # [C, 3]
    dist = (_chroma(rgb)[..., None, :] - palette).norm(dim=-1)  # [N, H, W, C]
    near = coloured[..., None] & (dist < CHROMA_RADIUS)
    counts = near.flatten(1, 2).sum(1)  # [N, C]
    n_obj = obj.flatten(1).sum(1)
    best, colour = counts.max(1)
    n_dark = dark.flatten(1).sum(1)
    dark_share = n_dark / (n_dark + best).clamp_min(1)
    pattern = torch.full_like(colour, UNREADABLE)
    pattern[dark_share <= PLAIN_MAX] = 0
    pattern[dark_share >= STRIPED_MIN] = 1
    pure = best >= PURITY_MIN * counts.sum(1)
    covers = (best + n_dark) >= COVER_MIN * n_obj
    ok = (best >= MIN_PIXELS) & pure & covers & (pattern >= 0)
    n_patterns = len(back_classes()) // len(BACK_COLOURS)
    return torch.where(ok, colour * n_patterns + pattern, torch.full_like(colour, UNREADABLE))


def read_distribution(read: Tensor) -> Tensor:
    """Shares of each back class and, last, of unreadable backs: [K + 1] (sums to 1)."""
    k = len(back_classes())
    idx = torch.where(read < 0, torch.full_like(read, k), read)
    return torch.bincount(idx, minlength=k + 1).double() / max(read.numel(), 1)


def unseen_distance(read: Tensor, probs: Tensor | None = None) -> float:
    """Total-variation distance between what was read (unreadable backs count as their own
    outcome, which the truth never has) and the true back-class distribution: 0 = same
    distribution, 1 = disjoint."""
    p = back_class_probs() if probs is None else probs.double()
    q = read_distribution(read)
    return float(0.5 * (q[:-1] - p).abs().sum() + 0.5 * q[-1])


def unreadable_rate(read: Tensor) -> float:
    return float((read < 0).double().mean())
