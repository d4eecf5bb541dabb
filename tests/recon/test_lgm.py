"""The LGM-compatible reconstructor: the published layout, the folder format, its inputs."""

import json
import shutil

import pytest
import torch
from tiny_util import ROOT, script

from recon.lgm import IMAGENET_MEAN, IMAGENET_STD, LGMReconstructor, lgm_config
from recon.lgm_folder import check_layout
from scenes.rig import make_rig
from scenes.world import WorldConfig

LAYOUT = json.loads((ROOT / "recon" / "lgm_layout.json").read_text())


def fixture_module():
    return script("make_lgm_fixture")


@pytest.fixture(scope="module")
def lgm_dir(tmp_path_factory):
    return fixture_module().make_lgm_fixture(tmp_path_factory.mktemp("lgm") / "lgm", size=16)


def _cams(size=16):
    rig = make_rig(WorldConfig(image_size=size, fov_deg=49.1, target_elevation=0.0))
    return rig.target_viewmats, rig.Ks(4)


def _meta_big():
    with torch.device("meta"):
        return LGMReconstructor(lgm_config("big"))


def test_full_size_architecture_has_the_published_layout():
    got = {k: list(v.shape) for k, v in _meta_big().state_dict().items()}
    assert list(got) == list(LAYOUT["keys"])
    assert got == LAYOUT["keys"]
    assert sum(torch.Size(s).numel() for s in got.values()) == LAYOUT["parameters"]


def test_the_published_header_passes_the_load_check_and_a_changed_one_does_not(tmp_path):
    shapes = {k: tuple(s) for k, s in LAYOUT["keys"].items()}
    check_layout(_meta_big(), shapes, tmp_path / "model_fp16.safetensors", "big")
    shapes["conv.weight"] = (14, 14, 3, 3)
    del shapes["unet.conv_in.bias"]
    with pytest.raises(ValueError, match=r"not the LGM 'big' layout.*1 missing.*conv_in\.bias"):
        check_layout(_meta_big(), shapes, tmp_path / "model_fp16.safetensors", "big")


def test_fixture_loads_with_the_release_rotation_and_its_rig(lgm_dir):
    m = LGMReconstructor.from_pretrained(lgm_dir)
    assert m.cfg.rotation_normalisation == "gaussian_axis"  # model_fp16.safetensors
    assert m.rig.views == [(0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0)]
    assert (m.rig.fov_deg, m.rig.image_size, m.rig.distance) == (49.1, 16, None)
    assert m.rig.convention == "opengl-c2w" and m.rig.normalisation == "imagenet"
    assert m.weights_key() == LGMReconstructor.from_pretrained(lgm_dir).weights_key()
    vm, Ks = _cams()
    g = m(torch.rand(2, 4, 3, 16, 16) * 2 - 1, vm, Ks)
    assert g.means.shape == (2, 4 * 8 * 8, 3)  # one Gaussian per output pixel (half size)
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(2, 256), atol=1e-5)
    # position clamp: [-1, 1]^3 in LGM's world is [-d/1.5, d/1.5]^3 here (d = 2.2)
    assert g.means.abs().max() <= 2.2 / 1.5 + 1e-5
    assert 0 <= g.opacities.min() and g.opacities.max() <= 1
    assert 0 <= g.colors.min() and g.colors.max() <= 1


def test_save_and_load_round_trip_bit_identical(lgm_dir, tmp_path):
    m = LGMReconstructor.from_pretrained(lgm_dir)
    m.save_pretrained(tmp_path / "again", record={"note": "again"})
    m2 = LGMReconstructor.from_pretrained(tmp_path / "again")
    vm, Ks = _cams()
    x = torch.rand(1, 4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(m(x, vm, Ks).means, m2(x, vm, Ks).means)
    assert m2.record["note"] == "again" and m2.record["weights"] == "model_fp16.safetensors"


def test_inputs_are_imagenet_normalised_rgb_then_rays(lgm_dir):
    m = LGMReconstructor.from_pretrained(lgm_dir)
    vm, Ks = _cams()
    x, a = m.network_inputs(-torch.ones(1, 4, 3, 16, 16), vm, Ks)
    assert x.shape == (1, 4, 9, 16, 16)
    want = [-mu / sd for mu, sd in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(x[0, 0, :3, 0, 0], torch.tensor(want))
    assert torch.allclose(x[0, :, 6:].norm(dim=1), torch.ones(4, 16, 16), atol=1e-5)


def test_the_fixrot_file_selects_the_fixed_rotation(tmp_path):
    d = fixture_module().make_lgm_fixture(tmp_path / "f", size=16, rotation="per_gaussian")
    assert (d / "model_fp16_fixrot.safetensors").exists()
    assert LGMReconstructor.from_pretrained(d).cfg.rotation_normalisation == "per_gaussian"


def test_a_folder_without_lgm_json_is_read_as_big(lgm_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(lgm_dir / "model_fp16.safetensors", bare)
    with pytest.raises(ValueError, match=r"not the LGM 'big' layout.*lgm\.json"):
        LGMReconstructor.from_pretrained(bare)


def test_bad_folders_and_inputs_are_clear_errors(lgm_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="exactly one of"):
        (tmp_path / "empty").mkdir()
        LGMReconstructor.from_pretrained(tmp_path / "empty")
    two = tmp_path / "two"
    shutil.copytree(lgm_dir, two)
    shutil.copy(two / "model_fp16.safetensors", two / "model_fp16_fixrot.safetensors")
    (two / "lgm.json").unlink()
    with pytest.raises(FileNotFoundError, match="found model_fp16.safetensors, model_fp16_fix"):
        LGMReconstructor.from_pretrained(two)
    bad = tmp_path / "bad"
    shutil.copytree(lgm_dir, bad)
    (bad / "lgm.json").write_text(json.dumps({"config": {"options": "huge"}}))
    with pytest.raises(ValueError, match="unknown LGM option set 'huge'"):
        LGMReconstructor.from_pretrained(bad)
    (bad / "model_fp16.safetensors").write_bytes(b"not weights")
    (bad / "lgm.json").unlink()
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        LGMReconstructor.from_pretrained(bad)
    m = LGMReconstructor.from_pretrained(lgm_dir)
    vm, Ks = _cams()
    with pytest.raises(ValueError, match=r"views must be \[B, 4, 3, 16, 16\]"):
        m(torch.zeros(1, 4, 3, 32, 32), vm, Ks)
    with pytest.raises(ValueError, match="splat_size"):
        LGMReconstructor(lgm_config("big", splat_size=256))
