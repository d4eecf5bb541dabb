import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_world():
    """A small world config that renders fast."""
    from scenes.world import WorldConfig

    return WorldConfig(image_size=16, gaussians=128)


def _tiny_teacher(tmp_path_factory, prediction: str):
    from teachers.lab import LabTeacher, LabTeacherConfig

    torch.manual_seed(0)
    cfg = LabTeacherConfig(
        image_size=16,
        channels=[16, 32],
        attention=[False, True],
        norm_groups=8,
        head_dim=8,
        prediction=prediction,
    )
    t = LabTeacher(cfg)
    # small random weights everywhere (diffusers zero-inits some output layers)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    t.save_pretrained(folder, dtype=torch.float32)
    return folder


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """A randomly initialised lab teacher at 16px (velocity), saved like the first shipped one."""
    return _tiny_teacher(tmp_path_factory, "velocity")


@pytest.fixture(scope="session")
def tiny_x0_teacher_dir(tmp_path_factory):
    """The same network predicting x0, like the shipped teacher."""
    return _tiny_teacher(tmp_path_factory, "x0")


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
    from scenes.data import make_split
    from scenes.world import WorldConfig

    root = tmp_path_factory.mktemp("data")
    w = WorldConfig(image_size=16, gaussians=64)
    make_split(root, "train", 12, w)
    make_split(root, "test", 6, w)
    return root


@pytest.fixture(scope="session")
def serving(tiny_teacher_dir, tmp_path_factory):
    """Two tiny students of the tiny teacher and a tiny reconstructor (see serve_util)."""
    from tiny_util import make_serving

    return make_serving(tiny_teacher_dir, tmp_path_factory.mktemp("serve"))
