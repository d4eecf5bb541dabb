"""One reconstructor interface: the lab's and the LGM-compatible reconstructor both declare a
rig, load through load_reconstructor, and map views to Gaussians; unknown folders are refused."""

import re
from dataclasses import asdict

import pytest
import torch
from test_lgm import fixture_module
from tiny_util import ROOT, tiny_recon

from recon.base import GaussianReconstructor
from recon.io import load_reconstructor, reconstructor_kind
from recon.lgm import LGMReconstructor
from recon.model import DEFAULT_RIG, Reconstructor
from scenes.model_views import check_views_fit, recon_world
from scenes.rig import make_rig
from scenes.world import WorldConfig, model_world, target_views


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("recons")
    lab = tiny_recon(16, seed=0)
    world = asdict(WorldConfig(image_size=16, target_elevation=10.0))
    lab.save_pretrained(root / "lab", record={"train_config": {"world": world}})
    return {"lab": root / "lab", "lgm": fixture_module().make_lgm_fixture(root / "lgm")}


def test_lab_default_rig_is_the_default_worlds():
    w = WorldConfig()
    assert DEFAULT_RIG == {
        "target_azimuths": w.target_azimuths,
        "target_elevation": w.target_elevation,
        "fov_deg": w.fov_deg,
        "distance": w.distance,
    }
    r = tiny_recon(16).rig
    assert r.views == target_views(WorldConfig()) and r.image_size == 16


def test_both_kinds_load_and_fill_the_interface(folders):
    vm = make_rig(WorldConfig(image_size=16, fov_deg=49.1, target_elevation=0.0))
    for kind, cls in (("lab", Reconstructor), ("lgm", LGMReconstructor)):
        assert reconstructor_kind(folders[kind]) == kind
        m = load_reconstructor(folders[kind])
        assert isinstance(m, cls) and isinstance(m, GaussianReconstructor) and m.kind == kind
        assert re.fullmatch(r"[0-9a-f]{16}", m.weights_key()) and isinstance(m.record, dict)
        assert m.rig.image_size == 16 and not m.training
        g = m(torch.zeros(1, 4, 3, 16, 16), vm.target_viewmats, vm.Ks(4))
        assert g.means.ndim == 3 and g.means.shape[0] == 1


def test_the_lab_world_of_each_reconstructor(folders):
    lab = load_reconstructor(folders["lab"])
    assert recon_world(lab) == model_world(lab.record, 16)
    assert lab.rig.views == target_views(recon_world(lab))
    lgm = load_reconstructor(folders["lgm"])
    w = recon_world(lgm)
    assert target_views(w) == [(0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0)]
    assert (w.fov_deg, w.image_size, w.distance) == (49.1, 16, WorldConfig().distance)


def test_a_teacher_off_the_lgm_rig_is_refused_naming_both(folders, tiny_teacher_dir):
    from teachers.io import load_teacher

    teacher = load_teacher(tiny_teacher_dir)
    teacher.record["train_config"] = {"world": asdict(WorldConfig(image_size=16))}  # elev. 20
    lgm = load_reconstructor(folders["lgm"])
    with pytest.raises(
        ValueError,
        match=r"at \(azimuth, elevation\) \(0, 20\).*takes 4 views at \(0, 0\), \(90, 0\)",
    ):
        check_views_fit(teacher, recon_world(lgm), "the teacher")


def test_the_lab_weights_key_is_the_weights_files_hash(folders):
    from samplers.protocol import file_key

    lab = load_reconstructor(folders["lab"])
    assert lab.weights_key() == file_key(folders["lab"] / "model.safetensors")
    shipped = ROOT / "shipped" / "recon"
    if (shipped / "recon.json").exists():
        assert load_reconstructor(shipped).weights_key() == file_key(shipped / "model.safetensors")


def test_unknown_folders_are_refused_naming_what_was_found(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "weights.bin").write_bytes(b"")
    (tmp_path / "x" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"not a reconstructor folder \(found config.json, wei"):
        load_reconstructor(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="no such reconstructor folder"):
        load_reconstructor(tmp_path / "missing")
