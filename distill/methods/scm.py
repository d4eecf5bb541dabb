"""scm: continuous-time consistency distillation, sCD (Lu & Song 2024, "Simplifying,
Stabilizing and Scaling Continuous-Time Consistency Models"), in TrigFlow on the teacher's path
by the exact conversions of distill/methods/trigflow.py.

The student is the teacher's network read as a velocity on the teacher's path (an x0 teacher's
output converted as every velocity student's is). Its x0 estimate is the consistency function
f, and x0 = x_t at t = 0 for a velocity output: the boundary f(x, 0) = x holds by construction.
Its TrigFlow output F follows from its (x0, eps). Each step:
1. Angles from the log-normal proposal: sigma_d tan(tau) = exp(P_mean + P_std n); the lab time
   t of each tau; x_t on the teacher's path and x_tau = x_t / k (TrigFlow's point).
2. The guided teacher's PF-ODE velocity dx_tau/dtau at (x_t, t) (sCD).
3. F and cos(tau) sin(tau) dF/dtau by one Jacobian-vector product of the student (no gradient)
   at (x_tau, tau), tangents (cos sin dx_tau/dtau, cos sin) (torch.func, as MeanFlow's; the
   attention on the math kernel).
4. The tangent g = -cos^2 (sigma_d F - dx_tau/dtau) - r cos sin (x_tau + sigma_d dF/dtau), which
   is cos(tau) df/dtau at r = 1; r = min(1, updates / tangent_warmup) (tangent warm-up); then
   the tangent normalisation g / (||g|| + c).
5. Target F_tgt = F + g, a constant; the loss e^w prior / D ||F_student - F_tgt||^2 - w with
   w = w_phi(tau) learned (adaptive weighting) and prior = 1 / (sigma_d tan tau). The student
   regresses its own velocity: F_student - F_tgt = (dF/dv) (v - v_tgt), so its per-sample
   weight is e^w prior (dF/dv)^2. The -w term and w_phi's gradient do not involve the student:
   w_phi steps its own Adam on e^w prior L - w with L = ||g||^2 / D, the student's loss at this
   step (its F equals F in value); the paper trains w_phi with the model's optimizer.
Sampling: multistep consistency (jump to x0, re-noise) from tau = pi/2, and for 2 steps through
tau = mid_angle; the lab times are recorded in the card (``sampling_times``).

Facts read in NVlabs/FastGen (fastgen/methods/consistency_model/sCM.py: the angle, scale and
JVP tangents, g and its normalisation constant, the prior 1/sigma and log-variance weighting;
fastgen/configs/methods/config_scm.py: sigma_d 0.5, c 0.1, 10k warm-up updates); P_mean,
P_std and the 2-step angle 1.1 as the paper gives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from distill.methods.base import Method, Needs, Targets
from distill.methods.trigflow import (
    F_per_velocity,
    lab_time,
    trig_angle,
    trig_F,
    trig_scale,
    trig_velocity,
)
from samplers.paths import _b, get_path, interpolate, to_x0_eps
from students.module import sinusoidal
from training.processes import average_gradients

SCM_STEPS = (1, 2)  # the step counts the sampler's angles are defined for


@dataclass
class SCMConfig:
    sigma_data: float = 0.5  # sigma_d: TrigFlow's data std (the paper's 0.5 for images)
    p_mean: float = -1.0  # log-normal proposal: log(sigma_d tan tau) ~ N(p_mean, p_std^2)
    p_std: float = 1.6
    tangent_warmup: int = 10000  # H: the tangent's second term ramps in over H updates (0: none)
    tangent_c: float = 0.1  # c of the tangent normalisation g / (||g|| + c)
    tangent_norm: str = "l2"  # l2: ||g|| of the whole sample (the paper); rms: ||g|| / sqrt(D)
    adaptive_weight: bool = True  # learned w_phi(tau); False: w = 0 (the prior weighting only)
    prior_weight: bool = True  # the prior weighting 1 / (sigma_d tan tau)
    weight_lr: float = 1e-3  # Adam learning rate of w_phi
    weight_features: int = 128  # Fourier features of log(sigma_d tan tau) under w_phi's layer
    mid_angle: float = 1.1  # tau of the 2-step sampler's intermediate time (the paper's 1.1)
    steps: list[int] = field(default_factory=lambda: [1, 2])  # sampled step counts (1, 2)


class LogWeight(nn.Module):
    """w_phi(tau): a linear layer on sinusoidal features of log(sigma_d tan tau), every tau
    starting at ``init``."""

    def __init__(self, features: int, init: float):
        super().__init__()
        self.features = features
        self.layer = nn.Linear(features, 1)
        nn.init.zeros_(self.layer.weight)
        nn.init.constant_(self.layer.bias, init)

    def forward(self, tau: Tensor, sigma_d: float) -> Tensor:
        c = torch.log((sigma_d * torch.tan(tau)).clamp(min=1e-12)).float()
        return self.layer(sinusoidal(c, self.features, scale=1.0))[:, 0]


def scm_tangent(F, jvp, dxdtau, x_tau, tau, sigma_d: float, r: float) -> Tensor:
    """g = -cos^2 (sigma_d F - dx/dtau) - r (cos sin x_tau + sigma_d jvp), where ``jvp`` is
    cos(tau) sin(tau) dF/dtau along the flow; at r = 1 it is cos(tau) df/dtau."""
    c, s = _b(torch.cos(tau), F).to(F.dtype), _b(torch.sin(tau), F).to(F.dtype)
    return -c * c * (sigma_d * F - dxdtau) - r * (c * s * x_tau + sigma_d * jvp)


def normalise_tangent(g: Tensor, c: float, kind: str = "l2") -> Tensor:
    """g / (||g|| + c) per sample (``rms``: the norm over sqrt of the dimension)."""
    norm = g.flatten(1).norm(dim=1)
    if kind == "rms":
        norm = norm / g[0].numel() ** 0.5
    return g / _b(norm + c, g)


class SCM(Method):
    name = "scm"
    sampler = "consistency"  # jump to x0 (f), re-noise at the next time
    Config = SCMConfig
    needs = Needs(prediction="velocity")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        bad = sorted(set(cfg.steps) - set(SCM_STEPS))
        if bad or not cfg.steps:
            raise ValueError(f"method.steps={cfg.steps}: sCM samples 1 or 2 steps (the paper's)")
        if cfg.sigma_data <= 0 or cfg.p_std <= 0 or cfg.tangent_c <= 0 or cfg.tangent_warmup < 0:
            raise ValueError(
                "method.sigma_data, method.p_std and method.tangent_c must be > 0 and "
                f"method.tangent_warmup >= 0, got {cfg}"
            )
        if not 0 < cfg.mid_angle < math.pi / 2:
            raise ValueError(f"method.mid_angle must lie in (0, pi/2), got {cfg.mid_angle}")
        if cfg.tangent_norm not in ("l2", "rms"):
            raise ValueError(f"method.tangent_norm={cfg.tangent_norm!r}; valid: l2, rms")
        lab_time(ctx.path, torch.zeros(1), 1.0)  # a path without a TrigFlow conversion: an error
        self.updates = 0  # optimizer updates done (the tangent warm-up)
        self.weight: LogWeight | None = None  # w_phi and its optimizer, made in prepare
        self.weight_opt = None

    def prepare(self, student) -> None:
        # w_phi starts where e^w L = 1 when ||g|| >> c: L = 1/D (l2) or 1 (rms)
        dim = math.prod(student.noise_shape())
        init = math.log(dim) if self.cfg.tangent_norm == "l2" else 0.0
        dev = next(student.parameters()).device
        self.weight = LogWeight(self.cfg.weight_features, init).to(dev)
        self.weight_opt = torch.optim.Adam(self.weight.parameters(), lr=self.cfg.weight_lr)

    def angles(self, d) -> Tensor:
        """tau per row (float64): sigma_d tan(tau) log-normal, at most the top time's angle."""
        n = d.local(torch.randn(d.total, generator=d.gen, device=d.gen.device)).double()
        sd = self.cfg.sigma_data
        tau = torch.atan(torch.exp(self.cfg.p_mean + self.cfg.p_std * n) / sd)
        top = trig_angle(self.ctx.path, torch.tensor(self.top_time(), dtype=torch.float64), sd)
        return tau.clamp(max=float(top))

    def targets(self, student, gen) -> Targets:
        d, x0, cond = self.rows(gen)
        path, sd = self.ctx.path, self.cfg.sigma_data
        # 1. angles, lab times and the point on the path (tau of t as the network sees it)
        t = lab_time(path, self.angles(d), sd).to(x0.dtype)
        t64 = t.double()
        tau = trig_angle(path, t64, sd)
        eps = d.randn(*x0.shape[1:])
        x_t = interpolate(path, x0, eps, t)
        x_tau = x_t / _b(trig_scale(path, t64, sd), x_t).to(x_t.dtype)
        with torch.no_grad():
            # 2. the guided teacher's TrigFlow velocity
            tx0, teps = self.teacher_x0_eps(x_t, t, cond)
            dxdtau = trig_velocity(tx0, teps, tau, sd)
            # 3. F and cos sin dF/dtau by one JVP; v: the student's own (velocity) output
            cs = torch.cos(tau) * torch.sin(tau)
            dx = _b(cs, x_tau).to(x_tau.dtype) * dxdtau
            F, jvp, v = self.trig_jvp(student, x_tau, tau, cond, dx, cs)
            # 4. the tangent, warmed up and normalised
            H = self.cfg.tangent_warmup
            r = min(1.0, self.updates / H) if H > 0 else 1.0
            g = scm_tangent(F, jvp, dxdtau, x_tau, tau, sd, r)
            g = normalise_tangent(g, self.cfg.tangent_c, self.cfg.tangent_norm)
        # 5. the target in the student's velocity, and the per-sample weight
        a = F_per_velocity(path, t64, sd)  # dF/dv
        prior = 1 / (sd * torch.tan(tau)) if self.cfg.prior_weight else torch.ones_like(tau)
        w = self.adapt_weight(tau, prior * g.flatten(1).double().pow(2).mean(1))
        weight = (torch.exp(w) * prior * a**2).to(x0.dtype)
        target = v + g / _b(a, v).to(v.dtype)
        return Targets(x_t=x_t, t=t, cond=cond, target=target, weight=weight)

    def trig_jvp(self, student, x_tau, tau, cond, dx, dt):
        """(F, its JVP with tangents (dx, dt), the student's velocity output) at (x_tau, tau)."""
        path, sd = get_path(student.path_name), self.cfg.sigma_data

        def f(x_, tau_):
            t = lab_time(path, tau_, sd)
            x = _b(trig_scale(path, t, sd), x_).to(x_.dtype) * x_
            v = student(x, t.to(x_.dtype), cond)
            x0, eps = to_x0_eps(path, v, x, t, "velocity")
            return trig_F(x0, eps, tau_, sd), v

        with sdpa_kernel(SDPBackend.MATH):
            F, jvp, v = torch.func.jvp(f, (x_tau, tau), (dx, dt), has_aux=True)
        self.count("student_jvp", x_tau.shape[0])
        return F, jvp, v

    def adapt_weight(self, tau: Tensor, loss: Tensor) -> Tensor:
        """w_phi(tau) before this step's update of w_phi on e^w ``loss`` - w (0 when off)."""
        if not self.cfg.adaptive_weight:
            return torch.zeros_like(tau)
        w = self.weight(tau, self.cfg.sigma_data)
        obj = (torch.exp(w.double()) * loss - w.double()).mean()
        self.weight_opt.zero_grad(set_to_none=True)
        obj.backward()
        average_gradients(list(self.weight.parameters()))  # one w_phi on every process
        self.weight_opt.step()
        return w.detach().double()

    def on_step(self, step: int, student) -> bool:
        self.updates = step
        return False

    def state_dict(self) -> dict:
        return {
            "updates": self.updates,
            "weight": self.weight.state_dict(),
            "weight_opt": self.weight_opt.state_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        self.updates = sd["updates"]
        self.weight.load_state_dict(sd["weight"])
        self.weight_opt.load_state_dict(sd["weight_opt"])

    def sampling_times(self) -> dict[str, list[float]]:
        """Lab times per step count: from tau = pi/2 (the top time) to 0, 2 steps through
        tau = mid_angle."""
        top, sd = self.top_time(), self.cfg.sigma_data
        mid = float(
            lab_time(self.ctx.path, torch.tensor(self.cfg.mid_angle, dtype=torch.float64), sd)
        )
        if not 0 < mid < top:
            raise ValueError(
                f"method.mid_angle={self.cfg.mid_angle} is lab time {mid:.4f}, not in (0, {top})"
            )
        grids = {1: [top, 0.0], 2: [top, mid, 0.0]}
        return {str(n): grids[n] for n in self.cfg.steps}

    def card(self) -> dict:
        return {"sigma_data": self.cfg.sigma_data, "sampling_times": self.sampling_times()}
