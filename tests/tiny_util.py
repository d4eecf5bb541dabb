"""Helpers shared by the tests: tiny diffusers components and the arguments of a smoke run of
`distill train` (a few updates of any method on tiny data)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DModel

from distill.methods import SMOKE_SETTINGS

METHOD_SMOKE = SMOKE_SETTINGS  # per method: settings small enough for two updates
ROOT = Path(__file__).resolve().parents[1]  # the repository


def script(name: str):
    """The module ``scripts/<name>.py`` (the scripts are not a package): fixture builders, the
    shipped-samples recorder."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def student_inputs(b: int = 2, seed: int = 0):
    """(x_t [b, 4, 3, 16, 16], t [b] in (0.05, 0.95), cond [b, 3, 16, 16]) for the tiny teacher."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 4, 3, 16, 16, generator=g),
        torch.rand(b, generator=g) * 0.9 + 0.05,
        torch.rand(b, 3, 16, 16, generator=g) * 2 - 1,
    )


def smoke_train_args(
    method: str, teacher: Path, run: Path, data_root: Path, train_count: int, *extra: str
) -> list[str]:
    """`python -m distill.cli train` for two updates of ``method`` at 16 px."""
    return [
        sys.executable, "-m", "distill.cli", "train", "--method", method,
        "--teacher", str(teacher),
        f"run_dir={run}", f"data.root={data_root}", f"data.train_count={train_count}",
        "world.image_size=16", "world.gaussians=64",
        "train.steps=2", "train.batch_size=2", "train.warmup=1", "train.log_every=1",
        "eval_count=2", *METHOD_SMOKE[method], *extra,
    ]  # fmt: skip


def pixel_unet(perturb: bool = False) -> UNet2DModel:
    """A tiny pixel-space UNet for a 2x2 grid of 8 px views with the condition concatenated.
    ``perturb`` adds small random weights everywhere (diffusers zero-inits the last conv)."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=6,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    if perturb:
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return unet


def tiny_vae() -> AutoencoderKL:
    """A tiny AutoencoderKL: 4 latent channels, 2x down."""
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )


def tiny_recon(image_size: int = 16, seed: int | None = None):
    """A tiny lab reconstructor (random weights) for views of ``image_size`` px."""
    from recon.model import ReconConfig, Reconstructor

    if seed is not None:
        torch.manual_seed(seed)
    cfg = ReconConfig(
        image_size=image_size, channels=[16, 32], attention=[False, True], norm_groups=8, head_dim=8
    )
    return Reconstructor(cfg)


# what each method's hand-built student needs, its card's sampler and step counts
CARD_KINDS = {
    "shortcut": ({"second_time": True}, "shortcut", [1, 2]),
    "consistency": ({"boundary": True}, "consistency", [1, 2, 4]),
}


def student_card(student, teacher_dir: Path, method: str = "shortcut", **kw):
    """A hand-built card for ``student`` (a tiny student of the lab teacher in ``teacher_dir``)."""
    from students.card import StudentCard

    _, sampler, steps = CARD_KINDS[method]
    fields = dict(
        method=method,
        teacher_dir=str(teacher_dir),
        teacher_weights=student.teacher_weights,
        teacher_kind="lab",
        path=student.path_name,
        prediction=student.prediction,
        sampler=sampler,
        steps=steps,
    )
    return StudentCard(**{**fields, **kw})


def tiny_student(teacher, method: str = "shortcut", noise: float = 0.0, **cfg):
    """A student of ``teacher`` built as ``method``'s (its inputs switched on), its trainable
    weights moved by ``noise`` x N(0, 1) so that it differs from the teacher."""
    from students.module import Student, StudentConfig

    needs, _, _ = CARD_KINDS[method]
    s = Student(teacher, StudentConfig(**{**needs, **cfg}))
    if noise:
        with torch.no_grad():
            for p in s.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * noise)
    return s


def make_serving(teacher_dir: Path, root: Path) -> Path:
    """Two tiny students of the tiny teacher (different weights) and a tiny reconstructor."""
    from teachers.io import load_teacher

    t = load_teacher(teacher_dir)
    for k, method in enumerate(["shortcut", "consistency"]):
        torch.manual_seed(10 + k)
        s = tiny_student(t, method, noise=0.01)
        s.save_pretrained(root / "students" / method, student_card(s, teacher_dir, method))
    tiny_recon(16, seed=0).save_pretrained(root / "recon")
    return root


def method_context(teacher, data_root: Path, batch: int = 4, steps: int = 10, **kw):
    """A method's Context on the tiny teacher and the train split under ``data_root``."""
    from distill.methods.base import Context
    from samplers.paths import get_path
    from scenes.data import WorldDataset

    return Context(
        teacher=teacher,
        path=get_path(teacher.path_name),
        prediction=teacher.prediction,
        teacher_guidance=1.0,
        data=WorldDataset(data_root, "train"),
        run_dir=data_root / "run",
        batch_size=batch,
        total_steps=steps,
        **kw,
    )


def smoke_sweep_config(out: Path, **kw):
    """A SweepConfig of ``kw`` (models, teacher, recon, encoder, data_root, ...) at smoke size:
    2 objects, one latency repeat, 50 subsets per set statistic, no calibration file, CPU."""
    from eval.sweep import SweepConfig

    base = dict(
        out=str(out),
        objects=2,
        batch=2,
        latency_repeats=1,
        set_resamples=50,
        throughput_batch=1,
        reference_steps=2,
        calibration=str(Path(out).parent / "none.json"),
        device="cpu",
    )
    return SweepConfig(**{**base, **kw})
