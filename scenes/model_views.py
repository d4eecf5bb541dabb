"""Which views a teacher or student makes, which of them a reconstructor's rig takes, and the
one world a set of models is evaluated on (the world they were trained on)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from scenes.world import WorldConfig, recorded_world, target_views, world_id


def model_cameras(model) -> list[tuple[float, float]] | None:
    """(azimuth, elevation) of each view a teacher or student makes: a diffusers teacher's
    multiview.json, else the target rig of the world the (lab) teacher was trained on; None when
    neither is recorded. A student answers for its teacher."""
    for m in (model, getattr(getattr(model, "student", None), "net", None)):
        if m is None:
            continue
        if getattr(m, "views", None):
            return [tuple(v) for v in m.views]
        world = recorded_world(getattr(m, "record", None))
        if world is not None:
            return target_views(world)
    return None


def _named_recon_views(model) -> list[int] | None:
    """The view indices a diffusers teacher's multiview.json names for the reconstructor
    (``recon_views``), for the teacher or a student's teacher; None when it names none."""
    for m in (model, getattr(getattr(model, "student", None), "net", None)):
        mv = (getattr(m, "record", None) or {}).get("multiview") if m is not None else None
        if mv and "recon_views" in mv:
            return [int(i) for i in mv["recon_views"]]
    return None


def check_views_fit(model, world: WorldConfig, name: str = "the model") -> list[int] | None:
    """Which of a model's views the reconstructor takes: None for all of them, in order (the
    model makes exactly the reconstructor's target rig, with the same cameras where it records
    them), else the indices of the rig's cameras among the model's: those its multiview.json
    names as ``recon_views``, or found by camera when the model makes more views than the rig
    (a 3x2 grid that holds the four rig views, say). Otherwise a ValueError names both rigs."""
    want = target_views(world)
    have = model_cameras(model)
    have = None if have is None else [tuple(map(float, v)) for v in have]
    n = model.info.views
    named = _named_recon_views(model)
    if named is not None:
        if len(named) != len(want) or not all(0 <= i < n for i in named):
            raise ValueError(
                f"{name}: multiview.json recon_views {named} must name {len(want)} of its {n} "
                "views (indices from 0), one per reconstructor view"
            )
        if have is None or [have[i] for i in named] == want:
            return named
    elif n == len(want) and (have is None or have == want):
        return None
    elif have is not None and all(w in have for w in want):
        return [have.index(w) for w in want]

    def cams(vs):
        return ", ".join(f"({a:g}, {e:g})" for a, e in vs)

    seen = f" at (azimuth, elevation) {cams(have)}" if have else ""
    raise ValueError(
        f"{name} makes {n} views{seen}, but the reconstructor takes {len(want)} views at "
        f"{cams(want)}: train a reconstructor on the teacher's rig or use a teacher whose views "
        "match"
    )


def recon_world(recon) -> WorldConfig:
    """The world whose target rig a reconstructor takes: the world it was trained on where its
    record holds one (the lab's), else the default world at its declared rig (cameras, field of
    view, image size; its distance where it fixes one, an LGM rescales any)."""
    world = recorded_world(getattr(recon, "record", None))
    if world is not None:
        return world
    rig = recon.rig
    els = list(rig.elevations)
    same = len(set(els)) == 1
    return WorldConfig(
        image_size=rig.image_size,
        fov_deg=rig.fov_deg,
        target_azimuths=list(rig.azimuths),
        target_elevation=els[0] if same else WorldConfig.target_elevation,
        target_elevations=[] if same else els,
        **({} if rig.distance is None else {"distance": rig.distance}),
    )


def trained_world(model) -> WorldConfig | None:
    """The world a teacher or student was trained on, where it is recorded: a lab teacher's
    record, a student's card, else (a student answers for its teacher) its teacher's record;
    None when none records one (an external teacher's folder, a bare fixture)."""
    card = getattr(model, "card", None)
    if card is not None:
        world = recorded_world({"train_config": getattr(card, "train_config", None) or {}})
        if world is not None:
            return world
    for m in (model, getattr(getattr(model, "student", None), "net", None)):
        world = recorded_world(getattr(m, "record", None)) if m is not None else None
        if world is not None:
            return world
    return None


def cameras_world(model) -> WorldConfig:
    """The default world at a model's image size and cameras (where it names them): the world a
    student of a teacher that records no world is trained on (distill/train_cmd.py
    student_world)."""
    world = WorldConfig(image_size=model.info.image_size)
    cams = model_cameras(model)
    if cams:
        world = replace(
            world, target_azimuths=[a for a, _ in cams], target_elevations=[e for _, e in cams]
        )
    return world


def _named(name: str, world: WorldConfig) -> str:
    return f"{name} (world {world_id(world)}, version {world.version})"


@dataclass
class EvalWorld:
    """The one world an evaluation runs on, chosen from its models: ``recorded_by`` names the
    model whose record gives it (then data of any other world is refused); None when no model
    records the world it was trained on (``world`` is then the default world at their cameras,
    and data already in the folder is taken if it is made at their image size)."""

    world: WorldConfig
    recorded_by: str | None

    def describe(self) -> str:
        wid = world_id(self.world)
        if self.recorded_by is not None:
            return f"the models' world (id {wid}, recorded by {self.recorded_by})"
        return "no model records the world it was trained on: the data folder's world"

    def open(self, root, split: str, count: int, batch: int = 8):
        """The ``split`` to evaluate on (scenes.data.WorldDataset): data of the models' world,
        made there if missing, extended if short; data of another world is a ValueError naming
        both. Models that record no world take the folder's data at their image size (else it
        is made in the default world at their cameras)."""
        from scenes.data import open_eval_split, open_world_split

        if self.recorded_by is None:
            return open_eval_split(
                root, split, count, self.world.image_size, self.world, batch=batch
            )
        return open_world_split(root, split, count, self.world, self.recorded_by, batch=batch)


def _one_world(worlds, then: str) -> tuple[str, WorldConfig] | None:
    """The first (name, world) of ``worlds`` (name -> recorded world or None) that records one;
    every other record must name the same world, else a ValueError names both and ends with
    ``then``. None when none records a world."""
    first: tuple[str, WorldConfig] | None = None
    for name, world in worlds:
        if world is None:
            continue
        if first is None:
            first = (name, world)
        elif world_id(world) != world_id(first[1]):
            raise ValueError(
                f"{_named(first[0], first[1])} and {_named(name, world)} were trained on different"
                f" worlds; {then}"
            )
    return first


def _folder_world(folder: Path) -> WorldConfig | None:
    """A saved model's recorded world: its student.json's, else (a student answers for its
    teacher) its teacher's teacher.json's, else its own teacher.json's; None without a record."""
    card = folder / "student.json"
    if card.exists():
        info = json.loads(card.read_text())
        world = recorded_world(info)
        if world is None and info.get("teacher_dir"):
            return _folder_world(Path(info["teacher_dir"]))
        return world
    card = folder / "teacher.json"
    return recorded_world(json.loads(card.read_text())) if card.exists() else None


def folders_world(folders: list[Path], image_size: int) -> WorldConfig:
    """The world the models saved in ``folders`` (student.json or teacher.json each) were
    trained on, read from their records without loading weights (a client of the served
    students: the load test, the page screenshot); every record must name the same world, else
    a ValueError names both. Without any record: the default world at ``image_size``."""
    worlds = ((str(f), _folder_world(Path(f))) for f in folders)
    first = _one_world(worlds, "serve models of one world together")
    return first[1] if first is not None else WorldConfig(image_size=image_size)


def models_world(models: dict[str, object]) -> EvalWorld:
    """The world a set of models (name -> teacher or student) is evaluated on: the world they
    were trained on, where they record it; every model that records one must record the same,
    else a ValueError names both. Without any record: the default world at the first model's
    cameras and image size."""
    if not models:
        raise ValueError("no models to choose an evaluation world from")
    worlds = ((name, trained_world(model)) for name, model in models.items())
    first = _one_world(worlds, "one evaluation runs on one world: evaluate them separately")
    if first is not None:
        return EvalWorld(first[1], first[0])
    return EvalWorld(cameras_world(next(iter(models.values()))), None)
