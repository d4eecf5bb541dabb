"""The distillation methods, chosen from an explicit table."""

from __future__ import annotations

from distill.methods.base import Method
from distill.methods.consistency import Consistency
from distill.methods.dmd2 import DMD2
from distill.methods.finetune import Finetune
from distill.methods.meanflow import MeanFlow
from distill.methods.progressive import Progressive
from distill.methods.reflow import Reflow
from distill.methods.scm import SCM
from distill.methods.shortcut import Shortcut

METHODS: dict[str, type[Method]] = {
    "progressive": Progressive,
    "consistency": Consistency,
    "reflow": Reflow,
    "shortcut": Shortcut,
    "meanflow": MeanFlow,
    "dmd2": DMD2,
    "finetune": Finetune,
    "scm": SCM,
}

# per method: settings that make a run of a few updates cheap (the smoke tests, the GPU check)
SMOKE_SETTINGS: dict[str, list[str]] = {
    "progressive": ["method.start_steps=4"],
    "reflow": [
        "method.couplings=4",
        "method.coupling_steps=2",
        "method.coupling_batch=2",
        "method.distill_steps=1",
    ],
    "shortcut": ["method.max_steps=8"],
    "consistency": ["method.grid=4"],
    "finetune": [],
    "meanflow": ["method.r_fraction=0.5"],
    "dmd2": [
        "method.fake_updates=1",
        "method.fake_lora_rank=4",
        "method.generator_steps=2",
        "method.regression_fraction=0.5",
        "method.couplings=2",
        "method.coupling_steps=2",
        "method.gan_weight=0.01",
    ],
    "scm": ["method.tangent_warmup=1"],
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]
