"""A student's card: what ``student.json`` records, read and written in one place."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

CARD_FILE = "student.json"


@dataclass
class StudentCard:
    """What ``student.json`` records."""

    method: str
    teacher_dir: str
    teacher_weights: str
    teacher_kind: str
    path: str
    prediction: str
    sampler: str
    steps: list[int]
    student: dict = field(default_factory=dict)  # StudentConfig
    guidance_scale: float = 1.0  # w fed to guidance-conditioned students (else CFG scale)
    stages: dict = field(default_factory=dict)  # steps -> stage folder with its own weights
    weights: str = ""  # hash of this student's weights
    train_config: dict = field(default_factory=dict)
    train_cost: dict = field(default_factory=dict)  # measured: wall_s, prepare_s, teacher_nfe, ...
    method_info: dict = field(default_factory=dict)  # method facts (progressive: updates/round)
    metrics: dict = field(default_factory=dict)
    created: str = ""


def read_card(folder: str | Path) -> StudentCard:
    """The card of a student folder; a missing or malformed one is an error naming the file."""
    path = Path(folder) / CARD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a student folder")
    try:
        return StudentCard(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}: not a valid student card ({e})") from e


def write_card(folder: str | Path, card: StudentCard) -> None:
    """Write ``card`` as the folder's ``student.json``."""
    (Path(folder) / CARD_FILE).write_text(json.dumps(asdict(card), indent=2))
