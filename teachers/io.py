"""Load any teacher folder: the lab's own or a diffusers-format adapter."""

from __future__ import annotations

import json
from pathlib import Path

from teachers.base import MultiViewTeacher


def load_teacher(folder: str | Path) -> MultiViewTeacher:
    """A teacher from ``folder`` (``teacher.json`` says which kind), in eval mode, float32."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher folder {folder} does not exist")
    meta_path = folder / "teacher.json"
    if meta_path.exists():
        try:
            kind = json.loads(meta_path.read_text()).get("kind", "lab")
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e})") from e
    else:
        kind = "diffusers"
    if kind == "lab":
        from teachers.lab import LabTeacher

        model = LabTeacher.from_pretrained(folder)
    elif kind == "diffusers":
        from teachers.external import DiffusersTeacher

        model = DiffusersTeacher.from_pretrained(folder)
    else:
        raise ValueError(f"{meta_path}: unknown teacher kind {kind!r}; valid: lab, diffusers")
    return model.eval()
