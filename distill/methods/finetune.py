"""finetune: continue the teacher's own objective for the same budget (the control).

"The teacher's own objective" is read from the teacher's record: a lab teacher's teacher.json
holds the train config of its last stage (``train_config.objective``, distill/teacher_cmd.py),
whose ``loss_space`` and ``loss_t_min`` are used here (the shipped teacher's refinement stage,
configs/teacher/refine.yaml: the velocity its x0 output implies, |x0 error|^2 / max(t, 0.05)^2)
together with its ``t_shift``. A teacher without a recorded objective (an external diffusers
teacher) gets the loss on its own prediction type (eps, v, ...), as such teachers are trained.
The time sampling and condition dropout are this config's (set to the teacher's by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distill.methods.base import Method, Targets, diffusion_targets
from samplers.paths import convert


@dataclass
class FinetuneConfig:
    t_sampling: str = "logit_normal"  # uniform | logit_normal, as the teacher was trained
    cond_dropout: float = 0.1  # null-condition rate (keeps CFG working)
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 50])  # sampled at any


def teacher_objective(teacher) -> dict:
    """The recorded objective of the teacher's last training stage: loss_space (prediction |
    velocity), loss_t_min and t_shift; the prediction-type loss when none is recorded."""
    record = getattr(teacher, "record", None) or {}
    obj = (record.get("train_config") or {}).get("objective") or {}
    space = obj.get("loss_space", "prediction")
    if space not in ("prediction", "velocity"):
        raise ValueError(f"the teacher's recorded objective.loss_space={space!r} is unknown")
    return {
        "loss_space": space,
        "loss_t_min": float(obj.get("loss_t_min", 0.05)),
        "t_shift": float(obj.get("t_shift", 1.0)),
    }


class Finetune(Method):
    name = "finetune"
    sampler = "euler"
    Config = FinetuneConfig

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.objective = teacher_objective(ctx.teacher)

    def targets(self, student, gen) -> Targets:
        d, x0, cond = self.rows(gen)
        obj = self.objective
        tg = diffusion_targets(
            x0,
            cond,
            self.ctx.path,
            self.ctx.prediction,
            d,
            self.cfg.t_sampling,
            self.cfg.cond_dropout,
            obj["t_shift"],
        )
        if obj["loss_space"] == "velocity":  # converted at max(t, t_min) in the loss
            tg.target = convert(
                self.ctx.path, tg.target, tg.x_t, tg.t, self.ctx.prediction, "velocity"
            )
            tg.space, tg.t_min = "velocity", obj["loss_t_min"]
        return tg

    def card(self) -> dict:
        return {"objective": dict(self.objective)}
