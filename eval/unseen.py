"""The unseen side (world versions 2 and 3): read each object's back class wherever a target view
shows it, and compare the per-object reads with the known back-class distribution.

Where the back shows: in each target view, the pixels inside the *true* silhouette whose surface
the condition camera does not see (the complement of eval/seen.py's seen mask, a depth test
against the condition view on the true Gaussians). A view *shows the back* when those pixels
reach ``BACK_SHARE_MIN`` of the view (40 of 1024 at 32 px) and the true view, read inside them,
reads the object's own back class; the views that show the back are fixed by the truth, once
per evaluation set, and an object whose true views show it in none has no unseen-side figure.

Measured on true renders of val objects 0..255 at 32 px (512 Gaussians; the geometry and so the
masks are the same in worlds 2 and 3). Unseen object pixels per view, min / median / max:
view 0 7 / 39 / 116, view 1 82 / 301 / 488, view 2 179 / 386 / 563, view 3 120 / 294 / 478.
A pixel floor alone does not make true views read: with every view above 40 px counted, 36% of
world-2 objects and 1.6% of world-3 objects read (60% / 2% at 80 px), because the depth test
calls much of a side view's grazing front unseen (world 2 reads views 1 and 3 in 80%; world 3
paints the back only on Gaussians the condition render weighs under one 8-bit level, so its
back covers a median 15-21% of the side views' unseen pixels and they read in 9% and 15%), and
view 0's few unseen pixels never read (0.4%). Views that show the back (floor and legibility):
world 2 views 0-3 0.4% / 80% / 99.6% / 80% of objects (any: 100%, a side view: 94.5%); world 3
0.4% / 9% / 92% / 15% (any: 92%, a side view: 22%). On those objects the true views read 100%
(no unreadable, no disagreement), unseen_dist 0.059 (world 2) and 0.061 (world 3), fit p 0.37.

The reader is fixed, not learned: a pixel belongs to a back colour when its chromaticity
(rgb / sum, invariant to the baked shading) lies near that colour's and it is saturated enough;
it is a stripe when it is dark. A view's colour is the back colour covering most of its coloured
(masked) pixels, its pattern follows from the share of dark pixels. A view whose winning colour
covers too little of the masked object, or whose dark share lies between plain and striped, is
*unreadable*: what a washed-out average of several plausible backs looks like.

An object's outcome: the class all views that show the back agree on; *unreadable* if any of
them is unreadable; *disagree* if the readable ones read different classes.

The issue-24 garbage (four views of uniform noise, a flat square of a back class's colour in
view 2, classes in the true proportions), on the same 256 objects: the view-2 rule gave it
0.048 against the true views' 0.059 (world 2) and 0.156 (world 3); read here it is 0.953
(244 of 256 unreadable; paired difference to the truth +0.894 +- 0.051) on world 2 and 0.305
(72 of 236 unreadable; +0.244 +- 0.068) on world 3, fit p 1e-4 on both.

Figures: ``unseen_dist``, the total-variation distance between the outcomes' shares (unreadable
and disagree are outcomes the truth never has) and ``back_class_probs()``; a goodness-of-fit
p-value of the outcomes against that distribution (Monte Carlo over multinomial draws of the
same size, with the same distance as statistic, so unreadable and disagree count against the
fit); and the *leak*: per object, [read class == the object's true class] minus the chance that
a generator blind to the input reads that class, p[read class] (0 for unreadable/disagree). Its
mean is accuracy minus chance: 0 in expectation for any generator independent of the input
(sum_k p_k^2 = 0.198 for one that samples the prior; a mode collapse does not count as a leak),
> 0 when the generated back follows the object's own. On world 2 the back shows in the
condition image, so a faithful model leaks; on world 3 nothing in the input says the back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scenes.world import BACK_COLOURS, back_class_probs, back_classes

UNREADABLE = -1  # a view that shows the back cannot be read
DISAGREE = -2  # the readable views read different classes

# a view can show the back when its unseen object pixels reach this share of the view's pixels
# (40 px at 32 px: views 1-3 of every val object, view 0 of half; module docstring)
BACK_SHARE_MIN = 40 / 1024

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

FIT_RESAMPLES = 10_000  # multinomial draws of the goodness-of-fit test
FIT_SEED = 4321


def _chroma(rgb: Tensor) -> Tensor:
    return rgb / rgb.sum(-1, keepdim=True).clamp_min(1e-6)


def _smooth(x: Tensor, mask: Tensor | None) -> Tensor:
    """A 3x3 mean (pixel noise averages out, 2-3 px stripes survive), over the masked pixels
    only when a mask is given (the seen front next to the mask does not bleed in)."""
    if mask is None:
        return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    m = mask[:, None].to(x.dtype)
    num = torch.nn.functional.avg_pool2d(x * m, 3, 1, 1, count_include_pad=False)
    den = torch.nn.functional.avg_pool2d(m, 3, 1, 1, count_include_pad=False)
    return num / den.clamp_min(1e-6)


def read_backs(views: Tensor, mask: Tensor | None = None) -> Tensor:
    """Back class index per image ([N, 3, H, W] in [-1, 1]) or ``UNREADABLE`` (-1): [N]; with
    ``mask`` [N, H, W], only the masked pixels are read."""
    if mask is not None and mask.shape != views.shape[:1] + views.shape[-2:]:
        raise ValueError(
            f"back mask {tuple(mask.shape)} does not fit views {tuple(views.shape)}: want [N, H, W]"
        )
    x = ((views.float() + 1) / 2).clamp(0, 1)
    if SMOOTH:
        x = _smooth(x, mask)
    rgb = x.movedim(-3, -1)  # [N, H, W, 3]
    mx, mn = rgb.max(-1).values, rgb.min(-1).values
    obj = (1 - mn) > OBJECT_MIN_DARKNESS  # not the white background
    if mask is not None:
        obj = obj & mask
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


def back_masks(seen: Tensor, obj: Tensor) -> Tensor:
    """[B, V, H, W] bool: the target pixels inside the true silhouette (``obj``) that the
    condition camera does not see (``seen``; both from eval.seen.seen_and_object_masks)."""
    return obj & ~seen


def shows_back(masks: Tensor, share: float = BACK_SHARE_MIN) -> Tensor:
    """[B, V] bool: the views whose back mask [B, V, H, W] covers at least ``share`` of them."""
    h, w = masks.shape[-2:]
    return masks.flatten(-2).sum(-1) >= share * h * w


def combine_reads(per_view: Tensor, shown: Tensor) -> Tensor:
    """Per object [B] from the reads of each view [B, V] and which views show the back [B, V]:
    the class the shown views agree on; ``UNREADABLE`` if any shown view is (or none shows the
    back); else ``DISAGREE`` if they read different classes."""
    k = len(back_classes())
    unreadable = (shown & (per_view < 0)).any(1) | ~shown.any(1)
    lo = torch.where(shown, per_view, torch.full_like(per_view, k)).min(1).values
    hi = torch.where(shown, per_view, torch.full_like(per_view, -1)).max(1).values
    out = torch.where(lo == hi, lo, torch.full_like(lo, DISAGREE))
    return torch.where(unreadable, torch.full_like(out, UNREADABLE), out)


def read_views(views: Tensor, masks: Tensor) -> Tensor:
    """Each view's masked read [B, V] (a class or ``UNREADABLE``) of views [B, V, 3, H, W]
    inside the back masks [B, V, H, W] (:func:`back_masks`)."""
    b, v = masks.shape[:2]
    return read_backs(views.flatten(0, 1), masks.flatten(0, 1)).reshape(b, v)


def legible_views(
    true_views: Tensor, masks: Tensor, true_class: Tensor, share: float = BACK_SHARE_MIN
) -> Tensor:
    """[B, V] bool: the views that show the back: enough unseen object pixels
    (:func:`shows_back`) and, inside them, the true view reads the object's own back class."""
    return shows_back(masks, share) & (read_views(true_views, masks) == true_class[:, None])


def read_objects(views: Tensor, masks: Tensor, shown: Tensor) -> Tensor:
    """Each object's outcome [B] (a class, ``UNREADABLE`` or ``DISAGREE``) from its generated
    views [B, V, 3, H, W], read inside the true back masks [B, V, H, W] of the views that show
    the back (``shown`` [B, V], :func:`legible_views`)."""
    return combine_reads(read_views(views, masks), shown)


def outcome_shares(read: Tensor, k: int) -> Tensor:
    """Shares of each of ``k`` classes, then of unreadable, then of disagree: [k + 2]."""
    if ((read < DISAGREE) | (read >= k)).any():
        raise ValueError(f"read outcomes {sorted(set(read.tolist()))} outside -2..{k - 1}")
    idx = read.clone()
    idx[read == UNREADABLE] = k
    idx[read == DISAGREE] = k + 1
    return torch.bincount(idx, minlength=k + 2).double() / max(read.numel(), 1)


def read_distribution(read: Tensor) -> Tensor:
    """Shares of each back class, then of unreadable, then of disagree: [K + 2] (sums to 1)."""
    return outcome_shares(read, len(back_classes()))


def _tv(q: Tensor, p: Tensor) -> Tensor:
    """Total variation between outcome shares q [..., K + 2] and class probabilities p [K]."""
    k = p.numel()
    return 0.5 * (q[..., :k] - p).abs().sum(-1) + 0.5 * q[..., k:].sum(-1)


def unseen_distance(read: Tensor, probs: Tensor | None = None) -> float:
    """Total-variation distance between the outcomes (unreadable and disagree are their own,
    which the truth never has) and the true back-class distribution: 0 = same, 1 = disjoint;
    NaN without objects (no figure, not the 0.5 that empty shares would give)."""
    p = back_class_probs() if probs is None else probs.double()
    if read.numel() == 0:
        return float("nan")
    return float(_tv(outcome_shares(read, p.numel()), p))


def fit_pvalue(
    read: Tensor, probs: Tensor | None = None, resamples: int = FIT_RESAMPLES, seed: int = FIT_SEED
) -> float:
    """Goodness of fit of the outcomes ``read`` [B] to the class distribution: the Monte Carlo
    p-value (1 + #{draws at least as far}) / (1 + draws) of the total-variation distance, over
    multinomial draws of B objects from ``probs`` (default ``back_class_probs()``). Unreadable
    and disagree objects add to the distance, so they count against the fit."""
    p = back_class_probs() if probs is None else probs.double()
    n = read.numel()
    if n == 0:
        return float("nan")
    obs = _tv(outcome_shares(read, p.numel()), p)
    g = torch.Generator().manual_seed(seed)
    out = []
    for chunk in torch.arange(resamples).split(max(1, 2_000_000 // n)):
        draws = torch.multinomial(p, len(chunk) * n, replacement=True, generator=g)
        draws = draws.reshape(len(chunk), n)
        counts = torch.zeros(len(chunk), p.numel() + 2, dtype=torch.float64)
        counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
        out.append(_tv(counts / n, p))
    null = torch.cat(out)
    return float((1 + (null >= obs - 1e-12).sum()) / (1 + resamples))


def leak(read: Tensor, true_class: Tensor, probs: Tensor | None = None) -> Tensor:
    """Per object [B]: 1 if the read class is the object's own back class, minus the chance
    that a generator blind to the input reads that class (``probs[read]``; 0 for unreadable and
    disagree). Its mean is accuracy minus chance; 0 in expectation when reads ignore the input."""
    p = back_class_probs() if probs is None else probs.double()
    hit = (read == true_class).double()
    chance = torch.where(read >= 0, p[read.clamp_min(0)], torch.zeros_like(hit))
    return hit - chance


def unreadable_rate(read: Tensor) -> float:
    return float((read == UNREADABLE).double().mean())


def disagree_rate(read: Tensor) -> float:
    return float((read == DISAGREE).double().mean())


def outcome_counts(read: Tensor) -> dict[str, int]:
    """How many objects read a class, were unreadable, or disagreed."""
    return {
        "read": int((read >= 0).sum()),
        "unreadable": int((read == UNREADABLE).sum()),
        "disagree": int((read == DISAGREE).sum()),
    }
