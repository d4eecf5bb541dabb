"""meanflow: average-velocity students (Geng et al. 2025, "Mean Flows for One-step Generative
Modeling"), distilled from the teacher's velocity.

The student u(z, r, t) predicts the average velocity over [r, t], so one step from t to r is
z_r = z_t - (t - r) u(z_t, r, t), and one set of weights serves any step count. Its second
time input is the absolute time r (DESIGN.md's ``s``).
1. Draw t and r (r < t for ``r_fraction`` of the batch, r = t otherwise) and z_t on the path.
2. The instantaneous velocity v at (z_t, t): the guided teacher's (``from_data``: the data's,
   eps - x0).
3. The total derivative du/dt = v d_z u + d_t u along the flow, with r fixed: a Jacobian-vector
   product of the student with tangents (v, 0, 1) for (z, r, t), through torch.func (the UNet's
   attention runs on the math kernel, which has forward-mode derivatives).
4. Target u_tgt = v - (t - r) du/dt, treated as a constant (stop-gradient).
At r = t the target is v itself: the flow-matching (or teacher-velocity) regression.

Weighting (Geng et al. 2025, Sec. 4.3 "adaptive loss weighting": L = sg(w) ||delta||^2 with
w = 1 / (||delta||^2 + c)^p, delta = u_theta - u_tgt; p = 1 is the best setting of its
ablation, c = 1e-3): ``adaptive_p`` and ``adaptive_c``, with ||delta||^2 taken as the mean
squared error per sample, as the lab's regression loss (and the public PyTorch ports) take it;
``adaptive_p: 0`` is the plain L2. The JVP is a network pass of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from distill.methods.base import Method, Needs, Targets, output_as, row_times
from samplers.paths import from_x0_eps, get_path, interpolate
from training.draws import Draws


@dataclass
class MeanFlowConfig:
    r_fraction: float = 0.25  # share of the batch with r < t (the rest: r = t)
    t_sampling: str = "logit_normal"  # distribution of the two times (uniform | logit_normal)
    from_data: bool = False  # v from the data (eps - x0) instead of the guided teacher
    adaptive_p: float = 1.0  # adaptive weight 1 / (||delta||^2 + c)^p (0: plain L2)
    adaptive_c: float = 1e-3
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])


def meanflow_target(v, dudt, t, r):
    """u_tgt = v - (t - r) du/dt, per sample (t, r: [B])."""
    return v - (t - r).reshape(-1, *([1] * (v.ndim - 1))) * dudt


class MeanFlow(Method):
    name = "meanflow"
    sampler = "meanflow"
    Config = MeanFlowConfig
    needs = Needs(path="linear", prediction="velocity", second_time=True)

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if not 0 <= cfg.r_fraction <= 1:
            raise ValueError(f"method.r_fraction must lie in [0, 1], got {cfg.r_fraction}")
        if cfg.adaptive_p < 0 or cfg.adaptive_c <= 0:
            raise ValueError(
                f"method.adaptive_p must be >= 0 and method.adaptive_c > 0, got "
                f"{cfg.adaptive_p} and {cfg.adaptive_c}"
            )

    def times(self, d: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, r) per row with r <= t: two draws sorted, and r = t outside the ``r_fraction``."""
        a = row_times(d, self.cfg.t_sampling)
        b = row_times(d, self.cfg.t_sampling)
        t, r = torch.maximum(a, b).clamp(min=1e-3), torch.minimum(a, b)
        keep = d.rand() < self.cfg.r_fraction
        return t, torch.where(keep, r, t)

    def average_velocity(self, model, z, t, r, cond):
        """u(z, r, t) as a velocity, whatever the model's own parametrization."""
        return output_as(model, z, t, cond, "velocity", s=r)

    def targets(self, student, gen) -> Targets:
        d, x0, cond = self.rows(gen)
        lin = get_path("linear")
        # 1. times and the point on the path
        t, r = self.times(d)
        eps = d.randn(*x0.shape[1:])
        z = interpolate(lin, x0, eps, t)
        with torch.no_grad():
            # 2. the instantaneous velocity
            if self.cfg.from_data:
                v = from_x0_eps(lin, x0, eps, t, "velocity")
            else:
                tx0, teps = self.teacher_x0_eps(z, t, cond)
                v = from_x0_eps(lin, tx0, teps, t, "velocity")
            # 3. du/dt along the flow, r held fixed
            dudt = self.total_derivative(student, z, t, r, cond, v)
        # 4. the target
        target = meanflow_target(v, dudt, t, r)
        groups = {"average": r < t, "instant": r >= t}  # loss terms logged on their own
        return Targets(
            x_t=z,
            t=t,
            cond=cond,
            target=target,
            s=r,
            groups=groups,
            space="velocity",
            adaptive_p=self.cfg.adaptive_p,
            adaptive_c=self.cfg.adaptive_c,
        )

    def total_derivative(self, model, z, t, r, cond, v):
        """d/dt u(z_t, r, t) = v . grad_z u + d_t u, by a Jacobian-vector product."""

        def u(z_, r_, t_):
            return self.average_velocity(model, z_, t_, r_, cond)

        with sdpa_kernel(SDPBackend.MATH):
            _, dudt = torch.func.jvp(u, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
        self.count("student_jvp", z.shape[0])
        return dudt
