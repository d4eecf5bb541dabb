"""consistency: latent-consistency-style distillation (Song et al. 2023; Luo et al. 2023).

On a fixed grid of N steps the guided teacher takes one DDIM step from t_n to t_{n-1}
(a skipping interval of 1/N); the student's consistency function at (x_{t_n}, t_n) regresses
an EMA target network's output at (x_hat_{t_{n-1}}, t_{n-1}). The guidance scale w is drawn
from a range, used by the teacher and fed to the student, so the student needs no CFG pass.
The boundary condition (c_skip(0) = 1, c_out(0) = 0) lives in the student wrapper.
Sampling with n steps visits the times i/n, which lie on the trained grid i'/N only when n
divides N: an advertised step count that does not is a ValueError (``steps`` empty: those of
1, 2, 4, 8 that divide N). The EMA target network's
passes are counted in the cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from distill.methods.base import Method, Needs, Targets
from samplers.paths import ddim_step, interpolate
from training.ema import EMA


@dataclass
class ConsistencyConfig:
    grid: int = 32  # N: teacher ODE steps span 1/N of the time axis
    ema_target: float = 0.95  # decay of the target network (LCM uses 0.95)
    loss: str = "pseudo_huber"  # pseudo_huber | l2
    huber_c: float = 0.00054  # pseudo-Huber c per sqrt(dimension) (Song & Dhariwal 2023)
    w_min: float = 1.0  # guidance scales drawn uniformly from [w_min, w_max]
    w_max: float = 3.0
    sample_w: float = 2.0  # w fed to the student at sampling: must lie in [w_min, w_max]
    steps: list[int] = field(default_factory=list)  # advertised; empty: 1, 2, 4, 8 dividing N


class Consistency(Method):
    name = "consistency"
    sampler = "consistency"
    Config = ConsistencyConfig
    needs = Needs(prediction="x0", guidance_input=True, boundary=True)

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if not cfg.w_min <= cfg.sample_w <= cfg.w_max:
            raise ValueError(
                f"method.sample_w={cfg.sample_w} lies outside the trained guidance range "
                f"[method.w_min, method.w_max] = [{cfg.w_min}, {cfg.w_max}]"
            )
        bad = [n for n in cfg.steps if n < 1 or cfg.grid % n]
        if bad:
            raise ValueError(
                f"method.steps {bad} do not divide method.grid={cfg.grid}: n sampling steps "
                f"visit the times i/n, trained only on the grid of {cfg.grid} steps"
            )
        self.target: EMA | None = None  # made in prepare, from the student

    def prepare(self, student) -> None:
        self.target = EMA(student, self.cfg.ema_target, warmup=False, module=True)

    def targets(self, student, gen) -> Targets:
        d, x0, cond = self.rows(gen)
        N = self.cfg.grid
        n = d.randint(1, N + 1).float()
        top = self.top_time()  # the grid the student samples on starts there
        t, t_prev = top * n / N, top * (n - 1) / N
        w = self.cfg.w_min + (self.cfg.w_max - self.cfg.w_min) * d.rand()
        eps = d.randn(*x0.shape[1:])
        x_t = interpolate(self.ctx.path, x0, eps, t)
        with torch.no_grad():
            tx0, teps = self.teacher_x0_eps(x_t, t, cond, scale=w)
            x_prev = ddim_step(self.ctx.path, tx0, teps, t_prev)
            target = self.target.module(x_prev, t_prev, cond, w=w)
        self.count("target_forward", len(target))
        c = self.cfg.huber_c * x0[0].numel() ** 0.5
        return Targets(x_t=x_t, t=t, cond=cond, target=target, w=w, loss=self.cfg.loss, huber_c=c)

    def steps(self) -> list[int]:
        if self.cfg.steps:
            return sorted(self.cfg.steps)
        return [n for n in (1, 2, 4, 8) if self.cfg.grid % n == 0]

    def on_step(self, step: int, student) -> bool:
        self.target.update(student)
        return False

    def state_dict(self) -> dict:
        return {"target": self.target.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.target.load_state_dict(sd["target"])

    def guidance_scale(self) -> float:
        return self.cfg.sample_w
