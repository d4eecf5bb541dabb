"""progressive: progressive distillation (Salimans & Ho 2022), guided as in Meng et al. 2023.

Round k trains the student to take in one DDIM step what its teacher takes in two; the first
round's teacher is the (guided) lab teacher at ``start_steps``, each later round's teacher is
the previous round's student, and the step count halves every round down to ``final_steps``.
Each round starts from the previous round's student with a fresh optimizer and learning-rate
schedule, as Salimans & Ho do (``restart_per_round: false`` keeps one optimizer for all rounds).
Each round's weights are kept, so the student folder holds one set per step count.

Weighting (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
Models", Sec. 4, "truncated SNR" weighting: L = max(alpha_t^2 / sigma_t^2, 1) ||x - x_hat||^2):
the loss is the x0 error the student's output implies, weighted per sample by max(SNR(t), 1)
with SNR = alpha^2 / sigma^2 of the lab's path (samplers/paths.py); on the linear path at
t = 1/8 that is 49. The target stays in the student's parametrization and the weight carries
the conversion: x0 depends on the output linearly, x0 = a x_t + c(t) out, so the weight is
max(SNR, 1) c(t)^2 (c = 1 for an x0 student, -t for a velocity student on the linear path).
The round teachers (the earlier rounds' students) are network passes of the cost.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from distill.methods.base import Method, Targets
from samplers.paths import Path, ddim_step, from_x0_eps, interpolate, to_x0_eps


@dataclass
class ProgressiveConfig:
    start_steps: int = 16  # the teacher's step count; round 1 trains a start_steps/2 student
    final_steps: int = 1  # the last round's step count
    loss: str = "l2"  # l2 on the x0 the student implies, weighted by max(SNR, 1)
    restart_per_round: bool = True  # fresh optimizer and warm-up schedule at each round


def truncated_snr(path: Path, t: Tensor) -> Tensor:
    """Salimans & Ho's weight max(alpha^2 / sigma^2, 1) per time."""
    return (path.alpha(t) ** 2 / path.sigma(t) ** 2).clamp(min=1.0)


def x0_coefficient(path: Path, t: Tensor, prediction: str) -> Tensor:
    """c(t) in x0 = a(t) x_t + c(t) out for a ``prediction`` network's output (x0 is linear in
    both): an output error e is an x0 error c(t) e."""
    return to_x0_eps(path, torch.ones_like(t), torch.zeros_like(t), t, prediction)[0]


def two_step_target(path: Path, x_t: Tensor, t: Tensor, x_end: Tensor, t_end: Tensor):
    """(x0, eps) whose single DDIM step from (x_t, t) lands exactly on x_end at t_end."""
    b = (-1,) + (1,) * (x_t.ndim - 1)
    a_t, s_t = path.alpha(t).reshape(b), path.sigma(t).reshape(b)
    a_e, s_e = path.alpha(t_end).reshape(b), path.sigma(t_end).reshape(b)
    det = a_t * s_e - s_t * a_e
    return (s_e * x_t - s_t * x_end) / det, (a_t * x_end - a_e * x_t) / det


class Progressive(Method):
    name = "progressive"
    schedule_spans_run = True  # the rounds share the run's updates evenly
    sampler = "ddim"
    Config = ProgressiveConfig

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        s = cfg.start_steps
        self.round_steps = []  # student step count of each round
        while s > cfg.final_steps:
            s //= 2
            self.round_steps.append(s)
        if not self.round_steps or self.round_steps[-1] != cfg.final_steps:
            raise ValueError(
                f"method.start_steps={cfg.start_steps} does not halve down to "
                f"method.final_steps={cfg.final_steps}"
            )
        self.per_round = max(1, ctx.total_steps // len(self.round_steps))
        self.round = 0
        self.round_teacher = None  # None = the lab teacher (guided)
        self.saved: dict[int, dict[str, Tensor]] = {}
        self.updates: dict[int, int] = {}  # student step count -> updates its round trained
        self.student = None  # set in prepare: round teachers are copies of it

    def current_steps(self) -> int:
        return self.round_steps[self.round]

    def _teacher_step(self, x, t, s, cond):
        if self.round_teacher is None:
            x0, eps = self.teacher_x0_eps(x, t, cond)
        else:
            with torch.no_grad():
                out = self.round_teacher(x, t, cond)
            self.count("round_teacher_forward", x.shape[0])
            x0, eps = to_x0_eps(self.ctx.path, out, x, t, self.round_teacher.prediction)
        return ddim_step(self.ctx.path, x0, eps, s)

    def prepare(self, student) -> None:
        self.student = student

    def targets(self, student, gen) -> Targets:
        d, x0, cond = self.rows(gen)
        n = self.current_steps()
        top = self.top_time()  # the sampler's grid: n equal steps from there down to 0
        i = d.randint(1, n + 1).float()
        t, t_mid, t_end = top * i / n, top * (i - 0.5) / n, top * (i - 1) / n
        eps = d.randn(*x0.shape[1:])
        path = self.ctx.path
        x_t = interpolate(path, x0, eps, t)
        with torch.no_grad():
            x_mid = self._teacher_step(x_t, t, t_mid, cond)
            x_end = self._teacher_step(x_mid, t_mid, t_end, cond)
        x0_tg, eps_tg = two_step_target(path, x_t, t, x_end, t_end)
        target = from_x0_eps(path, x0_tg, eps_tg, t, student.prediction)
        weight = truncated_snr(path, t) * x0_coefficient(path, t, student.prediction) ** 2
        return Targets(x_t=x_t, t=t, cond=cond, target=target, loss=self.cfg.loss, weight=weight)

    def on_step(self, step: int, student) -> bool:
        if step % self.per_round == 0 and self.round < len(self.round_steps):
            n = self.current_steps()
            self.saved[n] = {k: v.detach().clone() for k, v in student.trainable_state().items()}
            self.updates[n] = step - sum(self.updates.values())
            if self.round + 1 < len(self.round_steps):
                self.round += 1
                self._set_round_teacher(self.saved[n])
                print(
                    f"progressive: round {self.round + 1}: {n} -> {self.current_steps()} steps",
                    flush=True,
                )
                return self.cfg.restart_per_round
        return False

    def _set_round_teacher(self, weights: dict[str, Tensor]) -> None:
        """The next round's teacher: a frozen copy of the student with ``weights``."""
        rt = copy.deepcopy(self.student)
        rt.load_trainable_state(weights)
        self.round_teacher = rt.eval().requires_grad_(False)

    def state_dict(self) -> dict:
        return {"round": self.round, "saved": self.saved, "updates": self.updates}

    def load_state_dict(self, sd: dict) -> None:
        self.round, self.saved = sd["round"], sd["saved"]
        self.updates = dict(sd.get("updates", {}))
        if self.round > 0:  # the round teacher is the previous round's student
            self._set_round_teacher(self.saved[self.round_steps[self.round - 1]])

    def card(self) -> dict:
        return {"updates_per_round": {str(n): k for n, k in sorted(self.updates.items())}}

    def steps(self) -> list[int]:
        return sorted(self.round_steps)

    def stages(self) -> dict[int, dict[str, Tensor]]:
        return {n: sd for n, sd in self.saved.items() if n != self.cfg.final_steps}
