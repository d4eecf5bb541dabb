"""`distill teacher train`: train the lab's multi-view teacher on the world."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.config import load_config, save_config, to_dict
from distill.loop import TrainConfig, train
from distill.methods.base import diffusion_targets, regression_loss
from samplers.paths import get_path
from scenes.data import open_split
from scenes.world import WorldConfig, world_id
from teachers.base import weights_hash
from teachers.lab import LabTeacher, LabTeacherConfig


@dataclass
class DataSpec:
    root: str = "data/world"  # dataset root (made on first use)
    train_count: int = 4000  # training objects


@dataclass
class ObjectiveConfig:
    t_sampling: str = "logit_normal"  # uniform | logit_normal (SD3)
    cond_dropout: float = 0.1  # null-condition rate, for classifier-free guidance


@dataclass
class TeacherTrainConfig:
    run_dir: str = "runs/teacher"  # checkpoints, logs, resolved config
    out: str = ""  # final teacher folder; default <run_dir>/teacher
    data: DataSpec = field(default_factory=DataSpec)
    world: WorldConfig = field(default_factory=WorldConfig)
    teacher: LabTeacherConfig = field(default_factory=LabTeacherConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def train_teacher(args: list[str]) -> Path:
    cfg = load_config(TeacherTrainConfig, args)
    if cfg.world.image_size != cfg.teacher.image_size:
        raise ValueError(
            f"world.image_size={cfg.world.image_size} but teacher.image_size="
            f"{cfg.teacher.image_size}: set both to the same size"
        )
    if len(cfg.world.target_azimuths) != cfg.teacher.views:
        raise ValueError("world.target_azimuths and teacher.views disagree on the view count")
    run_dir = Path(cfg.run_dir)
    save_config(cfg, run_dir)
    ds = open_split(cfg.data.root, "train", cfg.data.train_count, cfg.world)
    n = cfg.data.train_count
    path = get_path(cfg.teacher.path)
    torch.manual_seed(cfg.train.seed)
    model = LabTeacher(cfg.teacher)
    obj = cfg.objective

    def step_fn(m, step, gen):
        dev = next(m.parameters()).device
        b = ds.batch(torch.randint(n, (cfg.train.batch_size,), generator=gen))
        tg = diffusion_targets(
            b["targets"],
            b["cond"],
            path,
            cfg.teacher.prediction,
            gen,
            obj.t_sampling,
            obj.cond_dropout,
        )
        out = m(tg.x_t.to(dev), tg.t.to(dev), tg.cond.to(dev))
        tg.target = tg.target.to(dev)
        return regression_loss(out, tg)

    t0 = time.perf_counter()
    model, ema, summary = train(run_dir, cfg.train, model, step_fn, desc="teacher")
    if ema is not None:
        ema.copy_to(model)
    out = Path(cfg.out or run_dir / "teacher")
    meta = {
        "world_id": world_id(cfg.world),
        "train_config": to_dict(cfg),
        "command": "distill teacher train " + " ".join(args),
        "train_seconds_last_run": round(time.perf_counter() - t0, 1),
        "steps": cfg.train.steps,
    }
    model.save(out, meta=meta)
    print(f"teacher saved to {out} (weights {weights_hash(LabTeacher.load(out))})")
    return out


if __name__ == "__main__":
    train_teacher(sys.argv[1:])
