"""TrigFlow (Lu & Song 2024, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency
Models") written on the lab's paths, by exact conversions.

TrigFlow: x_tau = cos(tau) x0 + sin(tau) z, z ~ N(0, sigma_d^2 I), tau in [0, pi/2]; the network
F gives the probability-flow velocity dx_tau/dtau = sigma_d F, and the consistency function is
f(x_tau, tau) = cos(tau) x_tau - sin(tau) sigma_d F.
The lab: x_t = alpha(t) x0 + sigma(t) eps (samplers/paths.py). With z = sigma_d eps both are
the same point up to a scale: x_t = k x_tau, where
  tan(tau) = sigma(t) / (sigma_d alpha(t))   and   k = sqrt(alpha^2 + (sigma / sigma_d)^2).
(Read in NVlabs/FastGen fastgen/methods/consistency_model/sCM.py: t_hat = atan2(sigma_t,
alpha_t sigma_d) and the scale sqrt(alpha^2 + (sigma/sigma_d)^2) of its TrigFlowPrecond.)
A denoiser's (x0, eps) at x_t gives F = cos(tau) eps - sin(tau) x0 / sigma_d, and then f = x0:
the consistency function is the lab model's x0 estimate. Times go through float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from samplers.paths import Path, _b


def trig_angle(path: Path, t: Tensor, sigma_d: float) -> Tensor:
    """TrigFlow's tau of the lab time t: atan2(sigma(t), sigma_d alpha(t)) (pi/2 at alpha = 0)."""
    return torch.atan2(path.sigma(t), sigma_d * path.alpha(t))


def lab_time(path: Path, tau: Tensor, sigma_d: float) -> Tensor:
    """The lab time t of the angle tau (the inverse of :func:`trig_angle`): the t where
    sigma(t) / alpha(t) = sigma_d tan(tau)."""
    s, c = sigma_d * torch.sin(tau), torch.cos(tau)
    if path.name == "linear":  # t / (1 - t) = s / c
        return s / (c + s)
    if path.name == "cosine":  # tan(pi t / 2) = s / c
        return torch.atan2(s, c) * (2.0 / math.pi)
    raise ValueError(f"no TrigFlow conversion for path {path.name!r}; valid: linear, cosine")


def trig_scale(path: Path, t: Tensor, sigma_d: float) -> Tensor:
    """k(t) = sqrt(alpha^2 + (sigma / sigma_d)^2), with x_t (lab) = k x_tau (TrigFlow)."""
    return torch.sqrt(path.alpha(t) ** 2 + (path.sigma(t) / sigma_d) ** 2)


def trig_velocity(x0: Tensor, eps: Tensor, tau: Tensor, sigma_d: float) -> Tensor:
    """dx_tau/dtau = -sin(tau) x0 + cos(tau) z for z = sigma_d eps (the PF-ODE velocity of a
    denoiser's estimates)."""
    s, c = (_b(f(tau), x0).to(x0.dtype) for f in (torch.sin, torch.cos))
    return -s * x0 + c * (sigma_d * eps)


def trig_F(x0: Tensor, eps: Tensor, tau: Tensor, sigma_d: float) -> Tensor:
    """TrigFlow's network output F of a denoiser's (x0, eps): the velocity over sigma_d."""
    return trig_velocity(x0, eps, tau, sigma_d) / sigma_d


def consistency_fn(x_tau: Tensor, F: Tensor, tau: Tensor, sigma_d: float) -> Tensor:
    """f(x_tau, tau) = cos(tau) x_tau - sin(tau) sigma_d F; the identity at tau = 0."""
    c, s = (_b(f(tau), x_tau).to(x_tau.dtype) for f in (torch.cos, torch.sin))
    return c * x_tau - s * (sigma_d * F)


def F_per_velocity(path: Path, t: Tensor, sigma_d: float) -> Tensor:
    """dF / dv: how TrigFlow's F moves with a lab velocity output v at fixed (x_t, t) (F is
    affine in v): k / (alpha sigma' - sigma alpha'). An F difference is this times the v one."""
    det = path.alpha(t) * path.d_sigma(t) - path.sigma(t) * path.d_alpha(t)
    return trig_scale(path, t, sigma_d) / det
