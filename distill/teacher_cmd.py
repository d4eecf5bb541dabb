"""`distill teacher train`: train the lab's multi-view teacher on the world."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.config import DataSpec, load_config, save_config, to_dict
from distill.methods.base import diffusion_targets, in_velocity, regression_loss
from samplers.paths import get_path
from scenes.data import open_split
from scenes.world import WorldConfig, target_views, world_id
from teachers.lab import LabTeacher, LabTeacherConfig
from training.checkpoints import start_from
from training.config import TrainConfig
from training.loop import train
from training.processes import is_main, main_first


@dataclass
class ObjectiveConfig:
    t_sampling: str = "logit_normal"  # uniform | logit_normal (SD3)
    cond_dropout: float = 0.1  # null-condition rate, for classifier-free guidance
    t_shift: float = 1.0  # > 1 moves training times towards noise (SD3 shift)
    # prediction: regress the network's own parametrization; velocity: convert the output and its
    # target to velocity first (an x0-predicting network trained with the flow-matching loss)
    loss_space: str = "prediction"
    loss_t_min: float = 0.05  # times below this are clamped in the velocity conversion


@dataclass
class TeacherTrainConfig:
    run_dir: str = "runs/teacher"  # checkpoints, logs, resolved config
    out: str = ""  # final teacher folder; default <run_dir>/teacher
    init: str = ""  # start from this teacher folder's weights (a refinement stage)
    data: DataSpec = field(default_factory=DataSpec)
    world: WorldConfig = field(default_factory=WorldConfig)
    teacher: LabTeacherConfig = field(default_factory=LabTeacherConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


LOSS_SPACES = ("prediction", "velocity")


def check_teacher_rig(t: LabTeacherConfig, w: WorldConfig) -> None:
    """A v3 teacher embeds its cameras as rays: they must be the world's rig (ValueError naming
    what differs and both values)."""

    def views(pairs):
        return [(float(a), float(e)) for a, e in pairs]

    mine = {
        "target views (azimuth, elevation)": views(zip(t.azimuths, t.elevations)),
        "condition camera": (float(t.cond_azimuth), float(t.cond_elevation)),
        "distance": float(t.distance),
        "fov_deg": float(t.fov_deg),
    }
    world = {
        "target views (azimuth, elevation)": views(target_views(w)),
        "condition camera": (float(w.cond_azimuth), float(w.cond_elevation)),
        "distance": float(w.distance),
        "fov_deg": float(w.fov_deg),
    }
    bad = [f"{k}: teacher {mine[k]} vs world {world[k]}" for k in mine if mine[k] != world[k]]
    if bad:
        raise ValueError(
            "teacher.arch=v3 embeds its cameras as rays, and they differ from the world's rig ("
            + "; ".join(bad)
            + "): set teacher.azimuths/elevations/cond_azimuth/cond_elevation/distance/fov_deg "
            "to the world's"
        )


def train_teacher(args: list[str]) -> Path:
    cfg = load_config(TeacherTrainConfig, args)
    if cfg.objective.loss_space not in LOSS_SPACES:
        raise ValueError(
            f"objective.loss_space={cfg.objective.loss_space!r}; valid: {', '.join(LOSS_SPACES)}"
        )
    if cfg.world.image_size != cfg.teacher.image_size:
        raise ValueError(
            f"world.image_size={cfg.world.image_size} but teacher.image_size="
            f"{cfg.teacher.image_size}: set both to the same size"
        )
    if len(cfg.world.target_azimuths) != cfg.teacher.views:
        raise ValueError("world.target_azimuths and teacher.views disagree on the view count")
    if cfg.teacher.arch == "v3":
        check_teacher_rig(cfg.teacher, cfg.world)
    run_dir = Path(cfg.run_dir)
    with main_first():  # one process makes the data; the others read it
        save_config(cfg, run_dir)
        ds = open_split(cfg.data.root, "train", cfg.data.train_count, cfg.world)
    n = cfg.data.train_count
    path = get_path(cfg.teacher.path)
    torch.manual_seed(cfg.train.seed)
    model = LabTeacher(cfg.teacher)
    if cfg.init:
        start_from(
            model, LabTeacher.from_pretrained(cfg.init), f"init teacher {cfg.init}", "teacher"
        )
    obj = cfg.objective

    def step_fn(m, step, draws):  # on the training device (the loop's): data rows and draws too
        b = ds.batch(draws.randint(0, n))
        tg = diffusion_targets(
            b["targets"],
            b["cond"],
            path,
            cfg.teacher.prediction,
            draws,
            obj.t_sampling,
            obj.cond_dropout,
            obj.t_shift,
        )
        out = m(tg.x_t, tg.t, tg.cond)
        if obj.loss_space == "velocity":
            out, tg.target = in_velocity(path, cfg.teacher.prediction, tg, out, obj.loss_t_min)
        return regression_loss(out, tg)

    t0 = time.perf_counter()
    model, ema, summary = train(run_dir, cfg.train, model, step_fn, desc="teacher")
    if ema is not None:
        ema.copy_to(model)
    out = Path(cfg.out or run_dir / "teacher")
    if not is_main():  # one process writes the teacher
        return out
    meta = {
        "world_id": world_id(cfg.world),
        "train_config": to_dict(cfg),
        "command": "distill teacher train " + " ".join(args),
        "train_seconds_last_run": round(time.perf_counter() - t0, 1),
        "steps": cfg.train.steps,
        "init": cfg.init,
    }
    model.save_pretrained(out, record=meta)
    print(f"teacher saved to {out} (weights {LabTeacher.from_pretrained(out).weights_key()})")
    return out


if __name__ == "__main__":
    train_teacher(sys.argv[1:])


def sample_teacher(
    teacher_dir: str,
    steps: int,
    sampler: str,
    seed: int,
    out: str,
    count: int,
    guidance: float,
    data_root: str,
    views_out: str = "",
) -> Path:
    """Grid of generated views next to the truth for the first ``count`` test objects; with
    ``views_out``, also the first object's generated views alone as the rows x cols grid PNG the
    reconstructor reads (`distill recon run --views`)."""
    from eval.views import generated_sheet, test_objects
    from students.sampling import sample_views
    from teachers.io import load_teacher

    model = load_teacher(teacher_dir)
    cond, gt, _ = test_objects(data_root, count, model.info.image_size)
    views, nfe = sample_views(
        model, cond, steps, [seed + i for i in range(count)], sampler, guidance
    )
    if views_out:
        write_views_grid(views[0], model.info.grid[0], views_out)
    return generated_sheet(
        cond, gt, views, "generated", out, f"{sampler}, {steps} steps, NFE {nfe}, cfg {guidance}"
    )


def write_views_grid(views, rows: int, path: str) -> Path:
    """One object's views [V, 3, H, W] in [-1, 1] as a rows x cols grid PNG (row-major)."""
    import numpy as np
    from PIL import Image

    from recon.tiling import tile_views

    grid = tile_views(views[None].float(), rows, views.shape[0] // rows)[0]
    arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)
    print(f"wrote {path} ({rows}x{views.shape[0] // rows} grid of the first object's views)")
    return Path(path)


def eval_teacher(
    teacher_dir: str,
    steps_list: list[int],
    sampler: str,
    count: int,
    guidance: float,
    out_dir: str,
    data_root: str,
    encoder_dir: str = "shipped/encoder",
    split: str = "test",
    targets: str = "",
    margins: str = "docs/metrics/margins.json",
) -> list[dict]:
    """The quality axis per step count (seen side, sharpness, unseen side on world version 2,
    FID/KID when the feature encoder exists) on ``split`` (val to choose, test to report),
    JSON + markdown + grid PNG. With ``targets`` (a reference teacher's quality.json, for FID)
    the 50-step row is decided against the teacher's targets (eval/teacher_targets.py) into
    targets.json and targets.md."""
    from eval.views import models_objects, quality_table, step_quality, steps_grid, write_json
    from teachers.io import load_teacher

    model = load_teacher(teacher_dir)
    # the world it was trained on: data of another world in data_root is refused
    truth, seeds, ew = models_objects(data_root, split, count, {f"teacher {teacher_dir}": model})
    encoder = None
    if encoder_dir and Path(encoder_dir).exists():
        from eval.encoder import FeatureEncoder

        encoder = FeatureEncoder.from_pretrained(encoder_dir)
    rows, views = step_quality(model, truth, seeds, steps_list, sampler, guidance, encoder=encoder)
    out = Path(out_dir)
    table = quality_table(rows)
    meta = {"teacher": teacher_dir, "split": split, "world_version": truth.world_version}
    meta["world"] = ew.describe()
    write_json({**meta, "rows": rows}, out / "quality.json")
    (out / "quality.md").write_text(
        f"Teacher `{teacher_dir}`, {split} split objects 0..{count - 1} (world version"
        f" {truth.world_version}, {meta['world']}), {sampler} sampler; ± is the 95% interval"
        " over objects.\n\n" + table + "\n"
    )
    steps_grid(
        truth.cond,
        truth.targets,
        views,
        out / "steps_grid.png",
        title=f"teacher, {sampler}, cfg {guidance}: same objects and noise per row",
    )
    print(table)
    print(f"wrote {out / 'quality.json'} and {out / 'steps_grid.png'}")
    if targets:
        write_targets(rows, meta, targets, margins, out)
    return rows


def write_targets(rows: list[dict], meta: dict, reference: str, margins: str, out: Path) -> None:
    """The 50-step row against the teacher's targets; the reference's 50-step row for FID."""
    from eval.margins import load_margins
    from eval.teacher_targets import targets_markdown, teacher_targets
    from eval.views import write_json

    row = next((r for r in rows if r["steps"] == 50), None)
    if row is None:
        raise ValueError("the targets are decided at 50 steps: include 50 in --steps")
    ref_rows = json.loads(Path(reference).read_text())["rows"]
    ref = next((r for r in ref_rows if r["steps"] == 50), None)
    found = load_margins(margins)  # None without a file: no margin-based target decides
    result = teacher_targets(row, found.values if found is not None else {}, ref)
    write_json(
        {**meta, "reference": reference, "margins": margins, "targets": result},
        out / "targets.json",
    )
    title = (
        f"Targets of teacher `{meta['teacher']}` at 50 steps, {meta['split']} split "
        f"({row['objects']} objects, world version {meta['world_version']}); FID against "
        f"`{reference}`, margins from `{margins}`."
    )
    (out / "targets.md").write_text(targets_markdown(result, title))
    print(targets_markdown(result, title))
