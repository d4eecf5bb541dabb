"""Dataset rows of the world: objects with their renders, and Gaussians packed as [..., N, 14]."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from recon.gaussians import Gaussians
from scenes.objects import back_class, object_and_condition
from scenes.rig import Rig, make_rig, render_views
from scenes.world import WorldConfig


def make_samples(seeds: list[int], cfg: WorldConfig, rig: Rig | None = None) -> dict[str, Tensor]:
    """Objects for ``seeds`` with their renders: cond [B,3,H,W], targets [B,V,3,H,W],
    heldout [B,M,3,H,W] in [-1, 1], and the Gaussians stacked as [B, N, 14]."""
    rig = rig or make_rig(cfg)
    made = [object_and_condition(s, cfg) for s in seeds]
    objs = [o for o, _ in made]
    g = Gaussians(**{k: torch.stack([o.as_dict()[k] for o in objs]) for k in objs[0].as_dict()})
    cams = torch.cat([rig.cond_viewmats, rig.target_viewmats, rig.heldout_viewmats])
    views = render_views(g, cams.expand(len(seeds), -1, -1, -1), rig.K, rig.size)
    if cfg.version >= 3:  # the condition render never reads a back colour (scenes.objects)
        seen = replace(g, colors=torch.stack([c for _, c in made]))
        cond_cams = rig.cond_viewmats.expand(len(seeds), -1, -1, -1)
        views[:, 0] = render_views(seen, cond_cams, rig.K, rig.size)[:, 0]
    v = rig.target_viewmats.shape[0]
    return {
        "cond": views[:, 0],
        "targets": views[:, 1 : 1 + v],
        "heldout": views[:, 1 + v :],
        "gaussians": pack_gaussians(g),
        "seeds": torch.tensor(seeds, dtype=torch.int64),
        "back_class": torch.tensor([back_class(s, cfg) for s in seeds], dtype=torch.int64),
    }


def pack_gaussians(g: Gaussians) -> Tensor:
    """[..., N, 14]: means 3, quats 4, scales 3, opacity 1, colour 3."""
    return torch.cat([g.means, g.quats, g.scales, g.opacities[..., None], g.colors], dim=-1)


def unpack_gaussians(x: Tensor) -> Gaussians:
    if x.shape[-1] != 14:
        raise ValueError(f"packed Gaussians must be [..., N, 14], got {tuple(x.shape)}")
    return Gaussians(
        means=x[..., 0:3],
        quats=x[..., 3:7],
        scales=x[..., 7:10],
        opacities=x[..., 10],
        colors=x[..., 11:14],
    )
