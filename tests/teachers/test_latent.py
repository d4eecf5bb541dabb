"""Latent teachers distil: a tiny random VAE + UNet2DConditionModel + CLIP image-encoder teacher
with a Zero123++-like 3x2 grid of six views (cameras in multiview.json). Every method trains a
few updates on world data rendered from those six cameras, in the teacher's latent space, and
the student samples decoded views."""

import json

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from tiny_util import smoke_train_args, tiny_recon, tiny_vae

from distill.methods import METHODS
from students.folder import LoadedStudent
from teachers.io import load_teacher

AZIMUTHS = [30.0, 90.0, 150.0, 210.0, 270.0, 330.0]
ELEVATIONS = [20.0, -10.0, 20.0, -10.0, 20.0, -10.0]


@pytest.fixture(scope="module")
def latent_teacher_dir(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("latent") / "teacher"
    tiny_vae().save_pretrained(folder / "vae")
    UNet2DConditionModel(
        sample_size=(24, 16),
        in_channels=8,  # 4 latent channels + the condition's 4, concatenated
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=16,  # the CLIP image embedding
        norm_num_groups=8,
        attention_head_dim=8,
    ).save_pretrained(folder / "unet")
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=224,
            patch_size=32,
            projection_dim=16,
        )
    ).save_pretrained(folder / "image_encoder")
    DDPMScheduler(
        prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False
    ).save_pretrained(folder / "scheduler")
    mv = {"rows": 3, "cols": 2, "image_size": 16, "azimuths": AZIMUTHS, "elevations": ELEVATIONS}
    (folder / "multiview.json").write_text(json.dumps(mv))
    return folder


def test_latent_teacher_reads_its_cameras(latent_teacher_dir):
    t = load_teacher(latent_teacher_dir)
    assert t.views == list(zip(AZIMUTHS, ELEVATIONS)) and t.noise_shape() == (6, 4, 8, 8)
    assert t.image_encoder is not None and t.vae is not None


def test_a_grid_without_enough_cameras_is_a_clear_error(latent_teacher_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(latent_teacher_dir, bad)
    mv = json.loads((bad / "multiview.json").read_text())
    mv["elevations"] = mv["elevations"][:4]
    (bad / "multiview.json").write_text(json.dumps(mv))
    with pytest.raises(ValueError, match="3x2 grid needs 6 azimuths and elevations, got 6 and 4"):
        load_teacher(bad)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_distils_a_latent_teacher(method, latent_teacher_dir, tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    from distill.cli import main

    args = smoke_train_args(method, latent_teacher_dir, run, data, 4, "student.lora_rank=4")
    assert main(args[3:]) == 0  # in-process: one import of torch for the seven methods
    st = LoadedStudent.from_pretrained(run / "student")
    manifest = json.loads((data / "train" / "manifest.json").read_text())
    assert manifest["count"] >= 4  # rendered from the teacher's six cameras:
    from scenes.data import WorldDataset

    ds = WorldDataset(data, "train")
    assert ds.world.target_azimuths == AZIMUTHS and ds.world.target_elevations == ELEVATIONS
    views, _ = st.sample(torch.zeros(1, 3, 16, 16), st.card.steps[0], [0])
    assert views.shape == (1, 6, 3, 16, 16) and torch.isfinite(views).all()


def test_views_that_are_not_the_reconstructors_rig_are_a_clear_error(latent_teacher_dir):
    """The sweep and serving refuse a teacher whose views the reconstructor was not trained on,
    naming both rigs; the same cameras pass."""
    from dataclasses import replace

    from scenes.model_views import check_views_fit
    from scenes.world import WorldConfig

    t = load_teacher(latent_teacher_dir)
    rig4 = WorldConfig(image_size=16)
    with pytest.raises(ValueError, match=r"makes 6 views at .*\(30, 20\), \(90, -10\).* takes 4"):
        check_views_fit(t, rig4, "the teacher")
    rig6 = replace(rig4, target_azimuths=AZIMUTHS, target_elevations=ELEVATIONS)
    check_views_fit(t, rig6)  # no error
    moved = replace(rig6, target_elevations=[20.0] * 6)
    with pytest.raises(ValueError, match="reconstructor takes 6 views at"):
        check_views_fit(t, moved)


def test_a_teacher_without_cameras_on_a_rig_of_other_size_is_a_clear_error(
    latent_teacher_dir, tmp_path
):
    """Six views with no cameras in multiview.json cannot train on the default four-view rig."""
    import shutil

    from distill.train_cmd import student_world
    from scenes.world import WorldConfig

    bare = tmp_path / "bare"
    shutil.copytree(latent_teacher_dir, bare)
    (bare / "multiview.json").write_text(json.dumps({"rows": 3, "cols": 2, "image_size": 16}))
    with pytest.raises(ValueError, match=r"makes 6 views \(3x2 grid\) but the world's rig has 4"):
        student_world(WorldConfig(image_size=16), load_teacher(bare))
    world = student_world(WorldConfig(image_size=16), load_teacher(latent_teacher_dir))
    assert world.target_azimuths == AZIMUTHS and world.target_elevations == ELEVATIONS


def test_a_grid_that_holds_the_rig_feeds_the_reconstructor_its_views(latent_teacher_dir, tmp_path):
    """Six views of which four are the reconstructor's rig cameras: the sweep and serving pass
    those four, in the rig's order (found by camera, or named as recon_views in multiview.json);
    names that point at other cameras, or too few, are a clear error."""
    import shutil

    from scenes.model_views import check_views_fit
    from scenes.world import WorldConfig
    from serve.pipeline import Pipeline

    folder = tmp_path / "t"
    shutil.copytree(latent_teacher_dir, folder)
    mv = json.loads((folder / "multiview.json").read_text())
    mv["azimuths"] = [90.0, 30.0, 0.0, 180.0, 210.0, 270.0]  # the rig: 0/90/180/270 at 20
    mv["elevations"] = [20.0, 20.0, 20.0, 20.0, -10.0, 20.0]
    (folder / "multiview.json").write_text(json.dumps(mv))
    rig4 = WorldConfig(image_size=16)
    assert check_views_fit(load_teacher(folder), rig4) == [2, 0, 3, 5]
    for named, ok in [([2, 0, 3, 5], True), ([1, 0, 3, 5], False), ([2, 0, 3], False)]:
        (folder / "multiview.json").write_text(json.dumps(dict(mv, recon_views=named)))
        if ok:
            assert check_views_fit(load_teacher(folder), rig4) == named
        else:
            with pytest.raises(ValueError):
                check_views_fit(load_teacher(folder), rig4)
    (folder / "multiview.json").write_text(json.dumps(mv))
    torch.manual_seed(0)
    tiny_recon(16).save_pretrained(tmp_path / "recon")
    pipe = Pipeline.from_pretrained(folder, tmp_path / "recon", device="cpu")
    views, g, _ = pipe(torch.zeros(1, 3, 16, 16), steps=1, seed=0)
    assert views.shape[1] == 6 and pipe.recon_views == [2, 0, 3, 5]
    assert g.means.shape[1] == 4 * 16 * 16  # one Gaussian per pixel of the four rig views
