"""One call to sample views from a teacher or a student folder."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def sample_views(
    model,
    cond: Tensor,
    steps: int,
    seeds: list[int],
    sampler: str = "euler",
    guidance: float = 1.0,
    batch: int = 32,
) -> tuple[Tensor, int]:
    """Views [N, V, 3, H, W] for every condition image, in batches; and the NFE per sample.
    Students use their own sampler (and guidance input); teachers use ``sampler``/``guidance``
    (the sampleable interface: ``model.sample``)."""
    dev = next(model.parameters()).device
    outs, nfe = [], 0
    for i in range(0, cond.shape[0], batch):
        c, sd = cond[i : i + batch].to(dev), seeds[i : i + batch]
        v, nfe = model.sample(c, steps, sd, sampler, guidance)
        outs.append(v.float().cpu())
    return torch.cat(outs), nfe
