"""The one time convention of the lab: probability paths and parametrization conversions.

t in [0, 1]; t = 0 is clean data, t = 1 is pure noise; x_t = alpha(t) * x0 + sigma(t) * eps.

Parametrizations a model can predict:
  - ``velocity``: dx_t/dt = alpha'(t) x0 + sigma'(t) eps (rectified flow / flow matching);
  - ``eps``: the noise;
  - ``x0``: the clean sample;
  - ``v``: alpha(t) eps - sigma(t) x0 (Salimans & Ho 2022).

Every conversion goes through (x0, eps); the one DDIM/Euler step is
``x_s = alpha(s) * x0_hat + sigma(s) * eps_hat``. This module imports nothing of the lab's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

PREDICTIONS = ("velocity", "eps", "x0", "v")


@dataclass(frozen=True)
class Path:
    """A probability path x_t = alpha(t) x0 + sigma(t) eps on t in [0, 1]."""

    name: str

    def alpha(self, t: Tensor) -> Tensor:
        if self.name == "linear":
            return 1.0 - t
        # cos(pi/2) is -4.4e-8 in float32: clamp so alpha(1) is exactly 0, never negative
        return torch.cos(0.5 * math.pi * t).clamp(0.0, 1.0)

    def sigma(self, t: Tensor) -> Tensor:
        if self.name == "linear":
            return t
        return torch.sin(0.5 * math.pi * t).clamp(0.0, 1.0)

    def d_alpha(self, t: Tensor) -> Tensor:
        if self.name == "linear":
            return -torch.ones_like(t)
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        if self.name == "linear":
            return torch.ones_like(t)
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha / sigma); +inf at t = 0, -inf at t = 1 (never NaN)."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))


PATHS = {"linear": Path("linear"), "cosine": Path("cosine")}


def get_path(name: str) -> Path:
    """The path called ``name``; an unknown name lists the valid ones."""
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; valid paths: {', '.join(PATHS)}")
    return PATHS[name]


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"unknown prediction type {prediction!r}; valid types: {', '.join(PREDICTIONS)}"
        )
    return prediction


def _b(t: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a per-sample time [B] (or a scalar) against a batch tensor [B, ...]. A float64
    time stays float64 (near t = 1 the cosine path's alpha needs it: float32 rounds t by 6e-8,
    alpha(0.996) by 1.5e-5 of itself); anything else takes the batch's dtype."""
    t = torch.as_tensor(t, device=like.device)
    if t.dtype != torch.float64:
        t = t.to(like.dtype)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape + (1,) * (like.ndim - t.ndim))


def _coefs(path: Path, t: Tensor | float, like: Tensor, *names: str) -> list[Tensor]:
    """The path's coefficients (alpha, sigma, d_alpha, d_sigma) at t, computed in t's precision
    and returned in the batch's dtype."""
    tb = _b(t, like)
    return [getattr(path, n)(tb).to(like.dtype) for n in names]


def interpolate(path: Path, x0: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
    """x_t on the path."""
    a, s = _coefs(path, t, x0, "alpha", "sigma")
    return a * x0 + s * eps


def from_x0_eps(path: Path, x0: Tensor, eps: Tensor, t: Tensor | float, prediction: str) -> Tensor:
    """The ``prediction``-parametrized quantity for a given (x0, eps) at time t."""
    if prediction == "x0":
        return x0
    if prediction == "eps":
        return eps
    if prediction == "velocity":
        da, ds = _coefs(path, t, x0, "d_alpha", "d_sigma")
        return da * x0 + ds * eps
    if prediction == "v":
        a, s = _coefs(path, t, x0, "alpha", "sigma")
        return a * eps - s * x0
    raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def to_x0_eps(
    path: Path, pred: Tensor, x_t: Tensor, t: Tensor | float, prediction: str
) -> tuple[Tensor, Tensor]:
    """(x0, eps) implied by a prediction of type ``prediction`` at (x_t, t)."""
    a, s = _coefs(path, t, x_t, "alpha", "sigma")
    if prediction == "x0":
        return pred, (x_t - a * pred) / s
    if prediction == "eps":
        if bool((a == 0).any()):
            raise ValueError(
                "an eps-prediction cannot give x0 where alpha(t) = 0 (pure noise): start "
                "sampling at the model's start_time < 1 (its last trained timestep)"
            )
        return (x_t - s * pred) / a, pred
    if prediction == "velocity":
        da, ds = _coefs(path, t, x_t, "d_alpha", "d_sigma")
        det = a * ds - s * da
        return (ds * x_t - s * pred) / det, (a * pred - da * x_t) / det
    if prediction == "v":
        norm = a * a + s * s
        return (a * x_t - s * pred) / norm, (s * x_t + a * pred) / norm
    raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def convert(path: Path, pred: Tensor, x_t: Tensor, t: Tensor | float, src: str, dst: str) -> Tensor:
    """Convert a prediction from parametrization ``src`` to ``dst``."""
    if src == dst:
        return pred
    x0, eps = to_x0_eps(path, pred, x_t, t, src)
    return from_x0_eps(path, x0, eps, t, dst)


def ddim_step(path: Path, x0: Tensor, eps: Tensor, s: Tensor | float) -> Tensor:
    """The one DDIM/Euler step: move to time s along the path through (x0_hat, eps_hat)."""
    return interpolate(path, x0, eps, s)


def velocity(path: Path, x0: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
    """dx_t/dt at time t for the given (x0, eps)."""
    return from_x0_eps(path, x0, eps, t, "velocity")
