"""The distillation methods, chosen from an explicit table."""

from __future__ import annotations

from distill.methods.base import Method
from distill.methods.consistency import Consistency
from distill.methods.dmd2 import DMD2
from distill.methods.finetune import Finetune
from distill.methods.meanflow import MeanFlow
from distill.methods.progressive import Progressive
from distill.methods.reflow import Reflow
from distill.methods.shortcut import Shortcut

METHODS: dict[str, type[Method]] = {
    "progressive": Progressive,
    "consistency": Consistency,
    "reflow": Reflow,
    "shortcut": Shortcut,
    "meanflow": MeanFlow,
    "dmd2": DMD2,
    "finetune": Finetune,
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]
