"""shortcut: step-size-conditioned students (Frans et al. 2024), distillation variant.

The student u(x_t, t, d) predicts the average velocity over a step of size d.
1. Flow part: at the smallest step d = 1/M the target is the guided teacher's velocity
   (``from_scratch`` uses the data's velocity instead), as the reference implementation trains
   its flow part at the finest level.
2. Bootstrap part (a fraction of the batch): a step of size d in {2/M, 4/M, ..., 1} regresses
   the average of two half steps of size d/2 of the EMA student; the half steps of the
   smallest bootstrap level (d/2 = 1/M) land on the level the flow part trains.
The EMA student is the run's EMA (``train.ema_decay``), kept as a callable copy. Sampling with
N steps uses d = 1/N, so the advertised step counts are trained levels: powers of two <= M
(``steps`` empty: every level up to min(M, 16)); any other count is a ValueError.

Weighting (Frans et al. 2024, "One Step Diffusion via Shortcut Models", Sec. 3, the combined
shortcut loss: E ||s(x_t, t, 0) - (x1 - x0)||^2 + ||s(x_t, t, 2d) - s_target||^2, both rows a
plain, equally weighted L2 on the velocity). A velocity student gets exactly that. The lab's
students keep the teacher's parametrization (x0), whose velocity (x_t - x0_hat) / t has no
floor: a constant x0 error would weigh 1/t^2 (16,384x more at t = 1/128 than at t = 1) and the
finest rows near t = 0 would decide every clipped update. Both the output and the target are
therefore converted to velocity at max(t, ``t_min``) (0.05, the floor the lab teacher's own
velocity loss uses: configs/teacher/refine.yaml ``loss_t_min``), which leaves a velocity
student's loss the paper's and weighs an x0 student's rows by (t / max(t, 0.05))^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from distill.methods.base import Method, Needs, Targets, output_as, sample_t
from samplers.paths import from_x0_eps, interpolate
from training.ema import EMA


@dataclass
class ShortcutConfig:
    max_steps: int = 128  # M: the smallest step is 1/M (a power of two)
    bootstrap_fraction: float = 0.25  # share of the batch with self-consistency targets
    from_scratch: bool = False  # flow targets from the data instead of the teacher
    t_sampling: str = "uniform"  # times of the flow (d = 1/M) part
    t_min: float = 0.05  # time floor of the velocity conversion of non-velocity students
    steps: list[int] = field(default_factory=list)  # advertised; empty: levels up to min(M, 16)


def trained_levels(max_steps: int) -> list[int]:
    """Step counts N whose step size 1/N shortcut trains: 1, 2, 4, ..., M."""
    return [2**j for j in range(int(math.log2(max_steps)) + 1)]


class Shortcut(Method):
    name = "shortcut"
    sampler = "shortcut"
    Config = ShortcutConfig
    needs = Needs(second_time=True)

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if cfg.max_steps < 2 or cfg.max_steps & (cfg.max_steps - 1):
            raise ValueError(f"method.max_steps must be a power of two >= 2, got {cfg.max_steps}")
        if not 0 < ctx.ema_decay < 1:
            raise ValueError(
                "shortcut needs train.ema_decay in (0, 1): its bootstrap targets come from the "
                f"EMA student (got {ctx.ema_decay})"
            )
        levels = trained_levels(cfg.max_steps)
        bad = [n for n in cfg.steps if n not in levels]
        if bad:
            raise ValueError(
                f"method.steps {bad} are not trained levels of method.max_steps="
                f"{cfg.max_steps}: N steps use d = 1/N, trained for N in {levels}"
            )
        self.ema: EMA | None = None  # made in prepare, from the student

    def steps(self) -> list[int]:
        if self.cfg.steps:
            return sorted(self.cfg.steps)
        return [n for n in trained_levels(self.cfg.max_steps) if n <= 16]

    def prepare(self, student) -> None:
        self.ema = EMA(student, self.ctx.ema_decay, self.ctx.ema_warmup, module=True)

    def _velocity(self, model, x, t, cond, d):
        return output_as(model, x, t, cond, "velocity", s=d)

    def targets(self, student, gen) -> Targets:
        dr, x0, cond = self.rows(gen)
        bs = x0.shape[0]
        # the first bootstrap_fraction of the global batch bootstraps, the rest follows the flow
        nb_all = int(round(dr.total * self.cfg.bootstrap_fraction))
        path, M, g = self.ctx.path, self.cfg.max_steps, dr.gen
        eps = dr.randn(*x0.shape[1:])
        # 1. bootstrap part: d = 2^j / M, t on the d-grid, two half steps of the EMA student
        j = torch.randint(1, int(math.log2(M)) + 1, (nb_all,), generator=g, device=g.device)
        d = (2.0**j) / M
        u = torch.rand(nb_all, generator=g, device=g.device)
        k = torch.floor(u * (1.0 / d)) + 1  # t = k d in (0, 1]
        d, t_b = dr.local(d), dr.local((k * d).clamp(max=1.0))
        nb = len(t_b)  # this process's bootstrap rows
        nf = bs - nb
        # 2. flow part: the smallest step d = 1/M, any t >= d
        t_f = sample_t(dr.total - nb_all, g, self.cfg.t_sampling, lo=1.0 / M, hi=1.0)
        t_f = dr.local(t_f, first=nb_all)
        t = torch.cat([t_b, t_f])
        s = torch.cat([d, torch.full((nf,), 1.0 / M)])
        x_t = interpolate(path, x0, eps, t)
        with torch.no_grad():
            target = torch.empty_like(x0)
            if nb:
                xb, cb, half = x_t[:nb], cond[:nb], d / 2
                ema = self.ema.module
                v1 = self._velocity(ema, xb, t_b, cb, half)
                x_mid = xb - half.reshape(-1, 1, 1, 1, 1) * v1
                v2 = self._velocity(ema, x_mid, t_b - half, cb, half)
                target[:nb] = 0.5 * (v1 + v2)
                self.count("target_forward", 2 * nb)
            if nf:
                xf, cf = x_t[nb:], cond[nb:]
                if self.cfg.from_scratch:
                    target[nb:] = from_x0_eps(path, x0[nb:], eps[nb:], t_f, "velocity")
                else:
                    tx0, teps = self.teacher_x0_eps(xf, t_f, cf)
                    target[nb:] = from_x0_eps(path, tx0, teps, t_f, "velocity")
        groups = {"bootstrap": torch.arange(bs) < nb, "flow": torch.arange(bs) >= nb}
        return Targets(
            x_t=x_t,
            t=t,
            cond=cond,
            target=target,
            s=s,
            groups=groups,
            space="velocity",
            t_min=self.cfg.t_min,
        )

    def on_step(self, step: int, student) -> bool:
        self.ema.update(student)
        return False

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.ema.load_state_dict(sd["ema"])
