"""The shipped models load on a fresh clone and reproduce the figures recorded next to them.

Each test regenerates the objects a recorded figure was measured on (deterministic from their
seeds: the teacher's and students' world, version 3, the reconstructor's version 1), measures
the shipped model the way the figure was measured, and compares.
"""

import json
from pathlib import Path

import pytest
import torch

from distill.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "shipped"
TOL_DB = 0.05  # fp rounding across machines; a wrong model is off by decibels

pytestmark = pytest.mark.skipif(
    not (SHIPPED / "teacher" / "teacher.json").exists(), reason="no shipped models"
)


@pytest.fixture(scope="module")
def teacher_world_data(tmp_path_factory):
    """The first test (64) and val (16) objects of the shipped teacher's world (version 3)."""
    from scenes.data import make_split
    from scenes.world import model_world
    from teachers.io import load_teacher

    teacher = load_teacher(SHIPPED / "teacher")
    world = model_world(teacher.record, teacher.info.image_size)
    assert world.version == 3
    root = tmp_path_factory.mktemp("world3")
    make_split(root, "test", 64, world)
    make_split(root, "val", 16, world)
    return root


@pytest.fixture(scope="module")
def recon_world_data(tmp_path_factory):
    """The first 64 test objects of the world the reconstructor was trained and measured on."""
    from recon.model import Reconstructor
    from scenes.data import make_split
    from scenes.world import model_world

    recon = Reconstructor.from_pretrained(SHIPPED / "recon")
    world = model_world(recon.record, recon.cfg.image_size)  # version 1
    root = tmp_path_factory.mktemp("world")
    make_split(root, "test", 64, world)
    return root


def test_shipped_teacher_reproduces_its_quality_table(teacher_world_data):
    """The shipped teacher (v3, world 3) reproduces the 2-step row of its test report
    (docs/teacher/v3; docs/teacher/quality.json is the world-2 teacher's, which v3's FID target
    is compared with)."""
    from teachers.io import load_teacher

    rec = json.loads((ROOT / "docs" / "teacher" / "v3" / "quality.json").read_text())
    assert rec["split"] == "test" and rec["world_version"] == 3
    model = load_teacher(SHIPPED / "teacher")
    assert model.cfg.arch == "v3" and model.cfg.concat_condition
    now = _reproduces_two_step_row(model, teacher_world_data, rec)
    # seen_psnr pools the views whose seen share reaches 0.5: on this rig view 0 alone
    assert now["seen_psnr"] == pytest.approx(now["seen_psnr_view0"], abs=1e-6)


def _reproduces_two_step_row(model, data_root: Path, rec: dict) -> dict:
    """Measure ``model`` at 2 steps on the test objects of ``data_root`` the way its report
    ``rec`` (a teacher quality.json) was measured, assert the recorded row's figures, and return
    the measured row."""
    from eval.views import eval_objects, step_quality

    row = next(r for r in rec["rows"] if r["steps"] == 2)
    truth, seeds = eval_objects(data_root, "test", row["objects"], model.info.image_size)
    rows, _ = step_quality(model, truth, seeds, [2], row["sampler"], row["guidance"])
    for k in ("seen_psnr_view0", "view0_psnr", "unseen_psnr"):
        assert rows[0][k] == pytest.approx(row[k], abs=TOL_DB), k
    return rows[0]


def test_shipped_reconstructor_reproduces_its_eval(recon_world_data):
    from distill.recon_cmd import recon_test_set
    from eval.recon_eval import evaluate
    from recon.model import Reconstructor
    from scenes.samples import unpack_gaussians

    rec = json.loads((ROOT / "docs" / "recon" / "recon_eval.json").read_text())
    model = Reconstructor.from_pretrained(SHIPPED / "recon")
    ds, b = recon_test_set(model, recon_world_data, rec["objects"])
    rig = ds.rig
    vm, K = rig.target_viewmats, rig.K
    Ks = K.expand(len(vm), 3, 3)
    with torch.inference_mode():
        res = evaluate(
            lambda v: model(v, vm, Ks),
            b["targets"],
            b["heldout"],
            unpack_gaussians(b["gaussians"]).means,
            rig.heldout_viewmats,
            K,
        )
    assert res["psnr"] == pytest.approx(rec["psnr"], abs=TOL_DB)
    assert res["ssim"] == pytest.approx(rec["ssim"], abs=2e-3)
    assert res["psnr"] > rec["baseline"]["psnr"] + 3.0


@pytest.mark.parametrize("method", list(METHODS))
def test_shipped_student_reproduces_its_card(method, teacher_world_data):
    from eval.compare import compare_rows
    from eval.views import eval_objects
    from students.folder import LoadedStudent

    folder = SHIPPED / "students" / method
    if not (folder / "student.json").exists():
        pytest.skip(f"no shipped {method} student")
    st = LoadedStudent.from_pretrained(folder, teacher_dir=str(SHIPPED / "teacher"))
    metrics = st.card.metrics
    steps = st.card.steps[0]
    rec = metrics["by_steps"][str(steps)]
    assert metrics["split"] == "val"  # quick figures for choosing, on val objects 0..15
    n = metrics["eval_objects"]
    truth, seeds = eval_objects(teacher_world_data, "val", n, st.info.image_size)
    cond, gt = truth.cond, truth.targets
    row = compare_rows({method: st}, cond, gt, seeds, [steps], reference=gt)[0]
    assert row["nfe"] == rec["nfe"]
    assert row["psnr_v0"] == pytest.approx(rec["psnr_v0"], abs=TOL_DB)
    assert row["psnr_unseen"] == pytest.approx(rec["psnr_unseen"], abs=TOL_DB)


def test_shipped_models_compute_what_they_computed_when_recorded(tmp_path):
    """The refactor guard: the shipped teacher, students and reconstructor give the tensors that
    scripts/shipped_samples.py recorded (bit-identical on the recording machine's torch and CPU;
    within 1e-5 where another CPU's kernels may round differently)."""
    from safetensors import safe_open
    from tiny_util import script

    mod = script("shipped_samples")
    with safe_open(str(mod.OUT), framework="pt") as f:
        recorded = {k: f.get_tensor(k) for k in f.keys()}
        where = f.metadata()["machine"]
    now = mod.compute(tmp_path)
    assert sorted(now) == sorted(recorded)
    for k, v in recorded.items():
        if where == mod.machine():
            assert torch.equal(now[k], v), k
        else:
            assert torch.allclose(now[k], v, rtol=0, atol=1e-5), k
