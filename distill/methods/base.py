"""The one contract between methods and the loop: a batch goes in, regression targets come out.

A method builds :class:`Targets`; :func:`regression_loss` evaluates the student on them and
returns the named loss terms the loop logs. The loop never asks which method runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from samplers.paths import Path, from_x0_eps, interpolate
from training.draws import Draws, as_draws


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
    huber_c: float = 0.0  # pseudo-Huber constant c (absolute, on the whole sample vector)
    space: str = "raw"  # raw: the student's own parametrization; else converted (velocity, x0)


def sample_t(n: int, gen: torch.Generator, kind: str, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """Training times: ``uniform`` or ``logit_normal`` (SD3; mean 0, std 1), mapped to [lo, hi]."""
    if kind == "uniform":
        u = torch.rand(n, generator=gen, device=gen.device)
    elif kind == "logit_normal":
        u = torch.sigmoid(torch.randn(n, generator=gen, device=gen.device))
    else:
        raise ValueError(f"unknown t sampling {kind!r}; valid: uniform, logit_normal")
    return lo + (hi - lo) * u


def row_times(d: Draws, kind: str, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """One training time per row of the step's batch (see :func:`sample_t`)."""
    return d.local(sample_t(d.total, d.gen, kind, lo, hi))


def shift_t(t: Tensor, shift: float) -> Tensor:
    """SD3's timestep shift: s t / (1 + (s - 1) t); 1 leaves t unchanged, > 1 favours noise."""
    if shift <= 0:
        raise ValueError(f"t_shift must be > 0, got {shift}")
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def drop_condition(cond: Tensor, p: float, gen: torch.Generator | Draws) -> Tensor:
    """Replace the condition by the null condition (zeros) with probability p per sample."""
    if p <= 0:
        return cond
    keep = (as_draws(gen, cond.shape[0]).rand() >= p).to(cond.dtype)
    return cond * keep[:, None, None, None]


def diffusion_targets(
    x0: Tensor,
    cond: Tensor,
    path: Path,
    prediction: str,
    gen: torch.Generator | Draws,
    t_sampling: str = "logit_normal",
    cond_dropout: float = 0.1,
    t_shift: float = 1.0,
) -> Targets:
    """The teacher's own objective: regress the ``prediction`` of (x0, eps) at a random t.
    ``t_shift`` > 1 moves the times towards noise (SD3's shift: t' = s t / (1 + (s - 1) t))."""
    d = as_draws(gen, x0.shape[0])
    t = shift_t(row_times(d, t_sampling), t_shift)
    eps = d.randn(*x0.shape[1:])
    return Targets(
        x_t=interpolate(path, x0, eps, t),
        t=t,
        cond=drop_condition(cond, cond_dropout, d),
        target=from_x0_eps(path, x0, eps, t, prediction),
    )


def output_as(model, x: Tensor, t: Tensor, cond: Tensor, space: str, **kw) -> Tensor:
    """A sampleable model's output at (x, t), converted to ``space`` (velocity, x0, ...)."""
    from samplers.paths import convert, get_path

    out = model(x, t, cond, **kw)
    return convert(get_path(model.path_name), out, x, t, model.prediction, space)


def pseudo_huber(diff: Tensor, c: float) -> Tensor:
    """sqrt(||d||^2 + c^2) - c per sample (Song & Dhariwal 2023), normalised by the dimension."""
    sq = (diff * diff).flatten(1).sum(1)
    return (torch.sqrt(sq + c * c) - c) / diff[0].numel() ** 0.5


def regression_loss(output: Tensor, tg: Targets) -> dict[str, Tensor]:
    """Mean loss over the batch, plus the mean of each named group of samples."""
    diff = output - tg.target
    if tg.loss == "l2":
        per = (diff * diff).flatten(1).mean(1)
    elif tg.loss == "pseudo_huber":
        per = pseudo_huber(diff, tg.huber_c)
    else:
        raise ValueError(f"unknown loss {tg.loss!r}; valid: l2, pseudo_huber")
    terms = {"loss": per.mean()}
    for name, mask in (tg.groups or {}).items():
        if mask.any():
            terms[name] = per[mask].mean().detach()
    return terms


@dataclass
class Context:
    """What a method may use besides the student: the frozen teacher and the data."""

    teacher: torch.nn.Module  # frozen, eval mode (wrapped in a CountingTeacher by the command)
    path: Path  # the teacher's path
    prediction: str  # the teacher's parametrization
    teacher_guidance: float  # guidance scale of teacher evaluations (distilled into the student)
    data: object  # scenes.data.WorldDataset (train split; may hold more objects than train_count)
    run_dir: object  # pathlib.Path of the run
    batch_size: int
    total_steps: int  # optimizer updates of the whole run
    train_count: int = 0  # objects training draws from (the first ones); 0 = all in ``data``
    ema_decay: float = 0.999  # the run's EMA (train.ema_decay): also every target network's
    ema_warmup: bool = True  # the run's EMA warm-up (train.ema_warmup)

    def objects(self) -> int:
        """How many train objects a method may draw from."""
        n = len(self.data)
        if self.train_count > n:
            raise ValueError(f"data.train_count={self.train_count} but the split has {n} objects")
        return self.train_count or n


class CountingTeacher(torch.nn.Module):
    """The frozen teacher, counting network evaluations per sample (a batch of B counts B)."""

    def __init__(self, teacher: torch.nn.Module):
        super().__init__()
        self.inner = teacher
        self.nfe = 0

    def forward(self, x, t, cond, *args, **kw):
        self.nfe += x.shape[0]
        return self.inner(x, t, cond, *args, **kw)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


class Method:
    """Base of the methods: batch in, targets out. Subclasses set ``name``, ``Config`` and
    ``sampler`` and implement :meth:`targets`; the rest are hooks with no-op defaults."""

    name = ""
    sampler = "euler"  # how its students are sampled
    Config: type = object

    def __init__(self, cfg, ctx: Context):
        self.cfg, self.ctx = cfg, ctx

    def student_setup(self, student_cfg) -> tuple[object, str | None, str | None]:
        """Adjust the StudentConfig; return it with the student's (path, prediction) or Nones
        to keep the teacher's."""
        return student_cfg, None, None

    def prepare(self, student) -> None:
        """Work before training (e.g. caching couplings); must be resumable."""

    def draws(self, gen: torch.Generator | Draws) -> Draws:
        """The step's draws (a bare generator: one process with ``ctx.batch_size`` rows)."""
        return as_draws(gen, self.ctx.batch_size)

    def batch(self, gen: torch.Generator | Draws) -> dict[str, Tensor]:
        """A training batch of the world's train split, this process's rows of the step's
        draw: the condition image in pixels, the target views in the teacher's model space (a
        latent teacher's VAE encodes them; identity in pixel space)."""
        b = self.ctx.data.batch(self.draws(gen).randint(0, self.ctx.objects()))
        return dict(b, targets=self.ctx.teacher.encode(b["targets"]))

    def targets(self, student, gen: torch.Generator | Draws) -> Targets:
        """The step's targets for this process's rows (``gen``: the loop's Draws, or a bare
        generator for one process)."""
        raise NotImplementedError

    def on_step(self, step: int, student) -> bool:
        """After each optimizer update (EMA targets, round switches). True asks the loop to
        restart the optimizer and learning-rate schedule from this update on."""
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass

    def steps(self) -> list[int]:
        """Step counts the finished student supports."""
        return list(self.cfg.steps)

    def stages(self) -> dict[int, dict[str, Tensor]]:
        """Extra weights per step count (progressive rounds); empty for most methods."""
        return {}

    def card(self) -> dict:
        """Extra facts for student.json (e.g. progressive's updates per round)."""
        return {}

    def guidance_scale(self) -> float:
        """The w fed to guidance-conditioned students at sampling (1.0 otherwise)."""
        return 1.0

    @torch.no_grad()
    def teacher_x0_eps(
        self, x: Tensor, t: Tensor, cond: Tensor, scale: float | Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The (guided) teacher's (x0, eps) at (x, t)."""
        from samplers.paths import to_x0_eps
        from samplers.sampling import guided

        g = self.ctx.teacher_guidance if scale is None else scale
        raw = guided(self.ctx.teacher, x, t, cond, g)
        return to_x0_eps(self.ctx.path, raw, x, t, self.ctx.prediction)
