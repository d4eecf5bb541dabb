"""Load any teacher folder: classified first (teachers/families.py), then loaded by its family's
adapter, or refused with the reason."""

from __future__ import annotations

import importlib
from pathlib import Path

from teachers.base import MultiViewTeacher
from teachers.families import classify

MVDREAM_MODULE = "teachers.mvdream"


def load_teacher(folder: str | Path) -> MultiViewTeacher:
    """A teacher from ``folder`` in eval mode, float32; a folder the lab does not fully
    understand is refused (ValueError naming what was found and what is unsupported)."""
    folder = Path(folder)
    family = classify(folder)
    if family.name == "lab":
        from teachers.lab import LabTeacher

        model = LabTeacher.from_pretrained(folder)
    elif family.name == "diffusers":
        from teachers.external import DiffusersTeacher

        model = DiffusersTeacher.from_pretrained(folder)
    elif family.name == "zero123plus":
        from teachers.zero123pp import Zero123PlusTeacher

        model = Zero123PlusTeacher.from_pretrained(folder)
    elif family.name in ("mvdream", "imagedream"):
        model = mvdream_module(folder, family.name).MVDreamTeacher.from_pretrained(folder)
    else:  # classify names only the families above
        raise ValueError(f"{folder}: family {family.name!r} has no loader")
    return model.eval()


def mvdream_module(folder: Path, name: str):
    """teachers.mvdream, imported only when an MVDream/ImageDream folder is loaded."""
    try:
        return importlib.import_module(MVDREAM_MODULE)
    except ModuleNotFoundError as e:
        if e.name != MVDREAM_MODULE:
            raise
        raise ValueError(
            f"{folder}: refused: found an {name} folder; its adapter ({MVDREAM_MODULE}) is not "
            "installed in this checkout"
        ) from e
