"""The one contract between methods and the loop: a batch goes in, regression targets come out.

A method builds :class:`Targets`; :func:`regression_loss` evaluates the student on them and
returns the named loss terms the loop logs. The loop never asks which method runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from samplers.paths import Path, convert, from_x0_eps, get_path, interpolate
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
    t_min: float = 0.0  # > 0: the conversion to ``space`` runs at max(t, t_min) (a floor)
    weight: Tensor | None = None  # per-sample loss weight [B] (a constant: no gradient)
    adaptive_p: float = 0.0  # > 0: MeanFlow's adaptive weight sg(1 / (err^2 + c)^p) per sample
    adaptive_c: float = 1e-3  # its c


TEACHERS = "teacher"  # in Needs: keep the teacher's path or parametrization


@dataclass(frozen=True)
class Needs:
    """What a method's student needs besides a copy of the teacher's network."""

    path: str = TEACHERS  # the student's path (linear, cosine) or the teacher's
    prediction: str = TEACHERS  # the student's parametrization (velocity, x0, ...) or the teacher's
    second_time: bool = False  # a second time input s (shortcut's step, MeanFlow's r)
    guidance_input: bool = False  # a guidance-scale input w (guidance-conditioned students)
    boundary: bool = False  # consistency preconditioning (the student predicts x0)

    def student_config(self, base):
        """``base`` (a StudentConfig) with the inputs this method needs switched on."""
        flags = ("second_time", "guidance_input", "boundary")
        return replace(base, **{k: True for k in flags if getattr(self, k)})

    def student_path(self, teacher) -> str:
        """The student's path name, given its teacher."""
        return teacher.path_name if self.path == TEACHERS else self.path

    def student_prediction(self, teacher) -> str:
        """The student's parametrization, given its teacher."""
        return teacher.prediction if self.prediction == TEACHERS else self.prediction


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
    plain = per
    if tg.weight is not None:
        per = per * tg.weight.detach().to(per.dtype)
    if tg.adaptive_p > 0:  # Geng et al. 2025: sg(w) ||delta||^2, w = 1 / (||delta||^2 + c)^p
        per = per * (per.detach() + tg.adaptive_c).pow(-tg.adaptive_p)
    terms = {"loss": per.mean()}
    if per is not plain:  # the unweighted regression error, for the log
        terms["l2"] = plain.mean().detach()
    for name, mask in (tg.groups or {}).items():
        if mask.any():
            terms[name] = plain[mask].mean().detach()
    return terms


def in_velocity(path, prediction: str, tg, out, t_min: float):
    """The output and target of a ``prediction`` network as velocities, converted at
    max(t, t_min): for an x0 network on the linear path the loss becomes |x0 error|^2 / t^2."""
    t = tg.t.clamp(min=t_min)
    x_t = tg.x_t
    return (
        convert(path, out, x_t, t, prediction, "velocity"),
        convert(path, tg.target, x_t, t, prediction, "velocity"),
    )


def student_loss(model, student, tg: Targets) -> dict[str, Tensor]:
    """The student's loss terms on ``tg``: ``model`` (the student, or the loop's wrapper of it)
    called with the extra inputs the targets carry, its output converted to the targets' space
    (``student`` gives the path and parametrization), regressed."""
    kw = {}
    if tg.s is not None:
        kw["s"] = tg.s
    if tg.w is not None:
        kw["w"] = tg.w
    out = model(tg.x_t, tg.t, tg.cond, **kw)
    if tg.space != "raw":  # the target's parametrization (velocity, x0)
        path, pred = get_path(student.path_name), student.prediction
        if tg.t_min > 0:  # both converted at the floored time, as the lab teacher's loss
            target = convert(path, tg.target, tg.x_t, tg.t, tg.space, pred)
            out, target = in_velocity_like(path, pred, tg, out, target, tg.space)
            return regression_loss(out, replace(tg, target=target))
        out = convert(path, out, tg.x_t, tg.t, pred, tg.space)
    return regression_loss(out, tg)


def in_velocity_like(path, prediction: str, tg: Targets, out: Tensor, target: Tensor, space: str):
    """``out`` and ``target`` (both in ``prediction``) converted to ``space`` at max(t, t_min):
    for an x0 network on the linear path in velocity space the squared error is
    |x0 error|^2 / max(t, t_min)^2, the loss the lab teacher trains on."""
    t = tg.t.clamp(min=tg.t_min)
    return (
        convert(path, out, tg.x_t, t, prediction, space),
        convert(path, target, tg.x_t, t, prediction, space),
    )


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

    @property
    def network(self) -> torch.nn.Module:
        """The frozen teacher itself, not counted (to build students and target networks from)."""
        return uncounted(self.teacher)

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


def uncounted(teacher: torch.nn.Module) -> torch.nn.Module:
    """The teacher inside a :class:`CountingTeacher` (the teacher itself otherwise)."""
    return teacher.inner if isinstance(teacher, CountingTeacher) else teacher


# network passes a method runs besides the loop's student forward and backward and the teacher
# (counted by CountingTeacher): per sample, a batch of B counts B; a JVP counts one pass
PASS_KINDS = (
    "student_forward",  # the student itself, without gradient (generator chains, x_hat)
    "student_jvp",  # a Jacobian-vector product through the student (MeanFlow's du/dt)
    "target_forward",  # an EMA target network or EMA student (consistency, shortcut)
    "round_teacher_forward",  # progressive's earlier-round student as teacher
    "fake_forward",  # DMD2's fake-score network (and its GAN head on top)
    "fake_backward",
)


class Method:
    """Base of the methods: batch in, targets out. Subclasses set ``name``, ``Config``,
    ``sampler`` and ``needs`` and implement :meth:`targets`; the rest are hooks with no-op
    defaults. Every network pass a method runs itself is counted in ``passes`` (the cost)."""

    name = ""
    sampler = "euler"  # how its students are sampled
    Config: type = object
    needs = Needs()  # what its student needs (path, parametrization, extra inputs)
    # True when the run's length shapes its schedule (rounds or a last stage spread over
    # ``ctx.total_steps``): a checkpoint part-way is then not a student of a shorter budget
    schedule_spans_run = False

    def __init__(self, cfg, ctx: Context):
        self.cfg, self.ctx = cfg, ctx
        self.passes = dict.fromkeys(PASS_KINDS, 0)  # this process, this run

    def count(self, kind: str, rows: int) -> None:
        """Count ``rows`` samples through a network pass of ``kind`` (one of PASS_KINDS)."""
        self.passes[kind] += int(rows)

    def final_ema(self, ema):
        """The weight average the finished student takes (the loop's EMA, or None: the raw
        weights); a method with a last stage of its own may average that stage only."""
        return ema

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

    def rows(self, gen: torch.Generator | Draws) -> tuple[Draws, Tensor, Tensor]:
        """The step's draws and this process's rows: target views in model space [B, V, C, h,
        w] and condition images [B, 3, H, W] (the opening of most ``targets``)."""
        d = self.draws(gen)
        b = self.batch(d)
        return d, b["targets"], b["cond"]

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

    def top_time(self) -> float:
        """Where sampling starts: 1 (pure noise), or an eps teacher's last trained time, where
        its x0 is still defined; grids of teacher steps run from here down to 0."""
        return float(getattr(self.ctx.teacher, "start_time", 1.0))

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
