"""Which views a teacher or student makes, and which of them a reconstructor's rig takes."""

from __future__ import annotations

from scenes.world import WorldConfig, recorded_world, target_views


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
