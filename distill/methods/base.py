"""The one contract between methods and the loop: a batch goes in, regression targets come out.

A method builds :class:`Targets`; :func:`regression_loss` evaluates the student on them and
returns the named loss terms the loop logs. The loop never asks which method runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from samplers.paths import Path, from_x0_eps, interpolate


@dataclass
class Targets:
    x_t: Tensor  # [B, V, C, h, w] student input
    t: Tensor  # [B]
    cond: Tensor  # [B, 3, H, W] (zeros = dropped condition)
    target: Tensor  # what the student output should equal, in ``space``
    s: Tensor | None = None  # second time input (shortcut step size, consistency target time)
    w: Tensor | None = None  # guidance-scale input for guidance-conditioned students
    groups: dict[str, Tensor] | None = None  # term name -> bool mask [B] (logged separately)
    loss: str = "l2"  # l2 | pseudo_huber
    huber_c: float = 0.0  # pseudo-Huber constant (per-element scale)
    space: str = "raw"  # raw: the student's prediction; x0: its x0 estimate


def sample_t(n: int, gen: torch.Generator, kind: str, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """Training times: ``uniform`` or ``logit_normal`` (SD3; mean 0, std 1), mapped to [lo, hi]."""
    if kind == "uniform":
        u = torch.rand(n, generator=gen)
    elif kind == "logit_normal":
        u = torch.sigmoid(torch.randn(n, generator=gen))
    else:
        raise ValueError(f"unknown t sampling {kind!r}; valid: uniform, logit_normal")
    return lo + (hi - lo) * u


def drop_condition(cond: Tensor, p: float, gen: torch.Generator) -> Tensor:
    """Replace the condition by the null condition (zeros) with probability p per sample."""
    if p <= 0:
        return cond
    keep = (torch.rand(cond.shape[0], generator=gen) >= p).to(cond.dtype)
    return cond * keep[:, None, None, None]


def diffusion_targets(
    x0: Tensor,
    cond: Tensor,
    path: Path,
    prediction: str,
    gen: torch.Generator,
    t_sampling: str = "logit_normal",
    cond_dropout: float = 0.1,
) -> Targets:
    """The teacher's own objective: regress the ``prediction`` of (x0, eps) at a random t."""
    b = x0.shape[0]
    t = sample_t(b, gen, t_sampling)
    eps = torch.randn(x0.shape, generator=gen)
    return Targets(
        x_t=interpolate(path, x0, eps, t),
        t=t,
        cond=drop_condition(cond, cond_dropout, gen),
        target=from_x0_eps(path, x0, eps, t, prediction),
    )


def pseudo_huber(diff: Tensor, c: float) -> Tensor:
    """sqrt(d^2 + c^2) - c per element (Song & Dhariwal 2023)."""
    return torch.sqrt(diff * diff + c * c) - c


def regression_loss(output: Tensor, tg: Targets) -> dict[str, Tensor]:
    """Mean loss over the batch, plus the mean of each named group of samples."""
    diff = output - tg.target
    if tg.loss == "l2":
        per = (diff * diff).flatten(1).mean(1)
    elif tg.loss == "pseudo_huber":
        per = pseudo_huber(diff, tg.huber_c).flatten(1).mean(1)
    else:
        raise ValueError(f"unknown loss {tg.loss!r}; valid: l2, pseudo_huber")
    terms = {"loss": per.mean()}
    for name, mask in (tg.groups or {}).items():
        if mask.any():
            terms[name] = per[mask].mean().detach()
    return terms
