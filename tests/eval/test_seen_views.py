"""The pooled seen figures use only views the condition camera really sees."""

import torch

from eval.seen import SEEN_SHARE_FLOOR, seen_metrics, seen_views


def test_views_below_the_seen_share_floor_leave_the_pooled_figures():
    obj = torch.ones(2, 3, 8, 8, dtype=torch.bool)
    seen = torch.zeros_like(obj)
    seen[:, 0] = True  # view 0: all seen
    seen[:, 1, :4] = True  # view 1: half seen (on the floor)
    seen[:, 2, 0, :2] = True  # view 2: 2 of 64 pixels (grazing)
    assert SEEN_SHARE_FLOOR == 0.5 and seen_views(seen, obj) == [0, 1]
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 3, 8, 8, generator=g) * 2 - 1
    gen = gt.clone()
    gen[:, 2] = -gt[:, 2]  # the grazing view is badly wrong
    pooled = seen_metrics(gen, gt, seen, [0, 1])
    assert (pooled["seen_psnr"] > 90).all() and (pooled["seen_ssim"] > 0.99).all()
    everything = seen_metrics(gen, gt, seen)
    assert (everything["seen_psnr"] < 60).all()  # the grazing pixel would have decided it
