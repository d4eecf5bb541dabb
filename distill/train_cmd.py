"""`distill train --method NAME`: distill the teacher into a student with one of the methods."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, make_dataclass, replace
from pathlib import Path

import torch

from distill.config import DataSpec, load_config, save_config, to_dict
from distill.methods import get_method
from distill.methods.base import Context, CountingTeacher, student_loss, uncounted
from samplers.paths import get_path
from scenes.data import open_split
from scenes.world import WorldConfig, recorded_world, world_id
from students.card import StudentCard
from students.module import Student, StudentConfig
from teachers.io import load_teacher
from training.checkpoints import LossLog
from training.config import TrainConfig
from training.loop import train
from training.processes import is_main, main_first, process_count, process_sum, train_device, unwrap


@dataclass
class DistillCommon:
    run_dir: str = ""  # default runs/students/<method>
    out: str = ""  # student folder; default <run_dir>/student
    teacher: str = "shipped/teacher"  # teacher folder
    teacher_guidance: float = 1.0  # CFG scale of teacher evaluations (distilled into the student)
    data: DataSpec = field(default_factory=DataSpec)
    world: WorldConfig = field(default_factory=WorldConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_count: int = 16  # val objects for the metrics recorded in student.json (0 = none)


def schema(method_cls) -> type:
    """DistillCommon plus this method's own config under ``method``."""
    return make_dataclass(
        f"{method_cls.__name__}DistillConfig",
        [("method", method_cls.Config, field(default_factory=method_cls.Config))],
        bases=(DistillCommon,),
    )


class Cost:
    """The run's measured training cost, carried through checkpoints so resumes add up. Teacher
    NFE and the method's own network passes are summed over the training processes at every
    update.

    ``network_passes`` counts samples through every pass of every network (a batch of B counts
    B): the loop's student forward and backward per row, the teacher's evaluations (its NFE,
    couplings included), and what the method runs itself (``Method.passes``: generator chains,
    EMA targets, JVPs, round teachers, the fake score's forward and backward). ``student_passes``
    is their sum, the one figure that compares methods."""

    def __init__(self, teacher: CountingTeacher, prepare_s: float, passes_per_update: int, method):
        self.teacher, self.prepare_s, self.per_update = teacher, prepare_s, passes_per_update
        self.method = method
        self.updates = 0
        self.earlier_nfe = 0  # earlier (killed) runs' teacher NFE
        self.nfe = teacher.nfe  # this run's, all processes, as of the last update
        self.earlier_passes = dict.fromkeys(method.passes, 0)  # earlier runs' method passes
        self.passes = dict(method.passes)  # this run's, all processes

    def count(self, step: int, _model) -> None:
        self.updates = step
        self.nfe = process_sum(self.teacher.nfe)
        self.passes = {k: process_sum(v) for k, v in self.method.passes.items()}

    def _method_passes(self) -> dict[str, int]:
        return {k: self.earlier_passes.get(k, 0) + v for k, v in self.passes.items()}

    def state_dict(self) -> dict:
        return {
            "teacher_nfe": self.earlier_nfe + self.nfe,
            "prepare_s": self.prepare_s,
            "method_passes": self._method_passes(),
        }

    def load_state_dict(self, sd: dict) -> None:  # earlier runs' cost plus this run's so far
        self.earlier_nfe = sd["teacher_nfe"]
        self.prepare_s += sd["prepare_s"]
        self.earlier_passes.update(sd.get("method_passes", {}))

    def network_passes(self) -> dict[str, int]:
        """Samples through each kind of network pass, the whole run."""
        loop = self.updates * self.per_update  # the loop's student rows
        passes = {"teacher_forward": self.earlier_nfe + self.nfe, "student_backward": loop}
        for k, v in self._method_passes().items():
            passes[k] = v + (loop if k == "student_forward" else 0)
        return passes

    def record(self, train_s: float) -> dict:
        passes = self.network_passes()
        return {
            "wall_s": round(self.prepare_s + train_s, 3),
            "prepare_s": round(self.prepare_s, 3),
            "train_s": round(train_s, 3),
            "teacher_nfe": self.earlier_nfe + self.nfe,
            "student_passes": sum(passes.values()),
            "network_passes": passes,
            "updates": self.updates,
            "machine": machine(),
        }


def machine() -> str:
    """Where a cost was measured, in words."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def student_world(asked: WorldConfig, teacher) -> WorldConfig:
    """Students learn on their teacher's world: the one the teacher records, unless the config
    names another explicitly (then it must be the same world). A teacher without a record that
    names its cameras (a diffusers folder's multiview.json) gets data rendered from them."""
    own = recorded_world(teacher.record)
    views = getattr(teacher, "views", None)
    if own is not None:
        if not (asked == WorldConfig() or world_id(asked) == world_id(own)):
            raise ValueError(
                f"world settings {world_id(asked)} differ from the teacher's world "
                f"{world_id(own)} (version {own.version}); drop the world.* overrides to train "
                "on the teacher's world"
            )
        world = own
    elif views:
        world = replace(
            asked,
            target_azimuths=[a for a, _ in views],
            target_elevations=[e for _, e in views],
        )
    else:
        world = asked
    n, (rows, cols) = len(world.target_azimuths), teacher.info.grid
    if n != teacher.info.views:
        raise ValueError(
            f"the teacher makes {teacher.info.views} views ({rows}x{cols} grid) but the world's "
            f"rig has {n} target views: name the teacher's cameras in its multiview.json "
            "(azimuths, elevations) or set world.target_azimuths and world.target_elevations"
        )
    return world


def train_student(method: str, args: list[str], teacher_dir: str | None = None) -> Path:
    t_prepare = time.perf_counter()
    mcls = get_method(method)
    cfg = load_config(schema(mcls), args)
    if teacher_dir:
        cfg.teacher = teacher_dir
    run_dir = Path(cfg.run_dir or f"runs/students/{method}")
    device = train_device()
    teacher = CountingTeacher(load_teacher(cfg.teacher).requires_grad_(False).to(device))
    cfg.world = student_world(cfg.world, teacher)
    if cfg.world.image_size != teacher.info.image_size:
        raise ValueError(
            f"world.image_size={cfg.world.image_size} but the teacher makes "
            f"{teacher.info.image_size}px views"
        )
    with main_first():  # one process makes the data; the others read it
        _check_run_teacher(run_dir, uncounted(teacher))
        save_config(cfg, run_dir)
        ds = open_split(cfg.data.root, "train", cfg.data.train_count, cfg.world)
    m = mcls(cfg.method, _context(cfg, teacher, ds, run_dir))
    student = _build_student(m, cfg).to(device)
    with device, main_first():  # built with the student (target networks); couplings made once
        m.prepare(student)
    per_update = cfg.train.batch_size * cfg.train.grad_accum * process_count()  # all processes
    cost = Cost(teacher, time.perf_counter() - t_prepare, per_update, m)

    def step_fn(model, step, draws):  # model: accelerate's wrapper, for the optimised forward
        return student_loss(model, student, m.targets(unwrap(model), draws))

    def on_step(step, model):
        cost.count(step, model)
        return m.on_step(step, model)

    t0 = time.perf_counter()
    student, ema, summary = train(
        run_dir,
        cfg.train,
        student,
        step_fn,
        extra_state={"method": m, "cost": cost},
        desc=method,
        on_step=on_step,
    )
    cost.updates = cfg.train.steps  # all done, also when a resumed run had none left to do
    ema = m.final_ema(ema)  # the loop's EMA, or the method's own average of its last stage
    if ema is not None:
        ema.copy_to(student)
    out = Path(cfg.out or run_dir / "student")
    if not is_main():  # one process writes the student and its figures
        return out
    seconds = LossLog(run_dir).total_seconds() or time.perf_counter() - t0
    _write_student(student, m, cfg, cost.record(seconds), seconds, run_dir, out)
    return out


def _context(cfg, teacher: CountingTeacher, ds, run_dir: Path) -> Context:
    """What the method may use besides the student."""
    return Context(
        teacher=teacher,
        path=get_path(teacher.path_name),
        prediction=teacher.prediction,
        teacher_guidance=cfg.teacher_guidance,
        data=ds,
        run_dir=run_dir,
        batch_size=cfg.train.batch_size,
        total_steps=cfg.train.steps,
        train_count=cfg.data.train_count,
        ema_decay=cfg.train.ema_decay,
        ema_warmup=cfg.train.ema_warmup,
    )


def _build_student(m, cfg) -> Student:
    """The untrained student: a copy of the teacher with what the method needs."""
    needs, teacher = m.needs, m.ctx.teacher
    scfg = needs.student_config(StudentConfig(**asdict(cfg.student)))
    torch.manual_seed(cfg.train.seed)
    return Student(
        m.ctx.network,
        scfg,
        path=needs.student_path(teacher),
        prediction=needs.student_prediction(teacher),
    )


def _write_student(student, m, cfg, cost: dict, seconds: float, run_dir: Path, out: Path) -> None:
    """The student folder with its card, the run's cost file, and the card's val figures."""
    card = StudentCard(
        method=m.name,
        teacher_dir=cfg.teacher,
        teacher_weights=student.teacher_weights,
        teacher_kind=m.ctx.teacher.info.kind,
        path=student.path_name,
        prediction=student.prediction,
        sampler=m.sampler,
        steps=m.steps(),
        guidance_scale=m.guidance_scale(),
        train_config=to_dict(cfg),
        train_cost=cost,
        method_info=m.card(),
    )
    card.train_config["train_seconds"] = round(seconds, 1)
    (run_dir / "train_cost.json").write_text(json.dumps(card.train_cost, indent=2))
    student.save_pretrained(out, card, stages=m.stages())
    if cfg.eval_count > 0:
        from distill.student_eval import record_metrics

        record_metrics(out, cfg.eval_count, cfg.data.root, teacher_guidance=cfg.teacher_guidance)
    c = card.train_cost
    print(
        f"student saved to {out} ({m.name}, steps {card.steps}; cost {c['wall_s'] / 60:.1f} min "
        f"wall incl. {c['prepare_s']:.0f} s preparation, {c['teacher_nfe']:,} teacher NFE, "
        f"{c['student_passes']:,} student passes)"
    )


def _check_run_teacher(run_dir: Path, teacher) -> None:
    """A run folder resumes only a run of the same teacher weights: another teacher's
    checkpoints (the same teacher path after a new teacher was shipped, say) are an error."""
    weights = teacher.weights_key()
    mark, card = run_dir / "teacher_weights.txt", run_dir / "student" / "student.json"
    before = mark.read_text().strip() if mark.exists() else None
    if before is None and card.exists() and (run_dir / "checkpoints").exists():
        before = json.loads(card.read_text()).get("teacher_weights")
    if before and before != weights:
        raise ValueError(
            f"{run_dir} holds a run distilled from other teacher weights ({before}, not "
            f"{weights}): give this run another run_dir, or delete that folder to start over"
        )
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        mark.write_text(weights + "\n")
