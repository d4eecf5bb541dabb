"""The Zero123++ family on its tiny fixture (scripts/make_fixtures.py): the published layout,
reference attention's facts, guidance's null branch, the latent space, refusals, sampling and a
distillation smoke run."""

import json
import re
import shutil

import pytest
import torch
from tiny_util import ROOT, script

from samplers.sampling import generate, guided
from teachers.base import tile_views, untile_views
from teachers.families import classify, unknown_unet_keys
from teachers.io import load_teacher
from teachers.reference_attention import ReferenceAttnProcessor

zero123plus = script("make_fixtures").zero123plus

LAYOUT = json.loads((ROOT / "teachers" / "layouts" / "zero123plus.json").read_text())


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return zero123plus(tmp_path_factory.mktemp("zpp") / "zero123plus")


@pytest.fixture(scope="module")
def teacher(fixture_dir):
    return load_teacher(fixture_dir)


def _inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 6, 4, 8, 8, generator=g)
    t = torch.rand(b, generator=g) * 0.8 + 0.1
    cond = torch.rand(b, 3, 16, 16, generator=g) * 2 - 1
    return x, t, cond


def _json(path):
    return json.loads(path.read_text())


def _pattern(key):
    return re.sub(r"\.\d+\.", ".#.", re.sub(r"\.\d+\.", ".#.", key))


def test_fixture_has_the_published_layout(fixture_dir):
    index = _json(fixture_dir / "model_index.json")
    assert index["_class_name"] == LAYOUT["model_index"]["_class_name"]
    for part, entry in LAYOUT["model_index"]["components"].items():
        assert index[part] == entry, part
    files = {"scheduler": "scheduler/scheduler_config.json"}
    for part, keys in LAYOUT["config_keys"].items():
        name = files.get(part) or (
            f"{part}/preprocessor_config.json" if "feature" in part else f"{part}/config.json"
        )
        cfg = _json(fixture_dir / name)
        assert set(keys) <= set(cfg), (part, set(keys) - set(cfg))
    unet_cfg = _json(fixture_dir / "unet" / "config.json")
    assert unknown_unet_keys(unet_cfg) == []
    pub = LAYOUT["published_values"]["unet"]
    for k in ("in_channels", "out_channels", "layers_per_block", "use_linear_projection"):
        assert unet_cfg[k] == pub[k], k
    assert unet_cfg["down_block_types"] == pub["down_block_types"]
    assert unet_cfg["up_block_types"] == pub["up_block_types"]
    sched = _json(fixture_dir / "scheduler" / "scheduler_config.json")
    assert {k: sched[k] for k in LAYOUT["published_values"]["scheduler"]} == (
        LAYOUT["published_values"]["scheduler"]
    )
    from safetensors import safe_open

    with safe_open(str(fixture_dir / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        patterns = sorted({_pattern(k) for k in f.keys()})
    assert patterns == LAYOUT["unet_state_dict"]["patterns"]


def test_the_fixture_is_classified_and_loaded_as_zero123plus(teacher):
    assert teacher.info.kind == "zero123plus" and teacher.info.grid == (3, 2)
    assert teacher.path_name == "cosine" and teacher.prediction == "v"
    assert teacher.noise_shape() == (6, 4, 8, 8) and teacher.info.image_size == 16
    assert teacher.views == list(zip([30.0, 90, 150, 210, 270, 330], [20.0, -10] * 3))


def test_reference_disabled_equals_the_plain_unet_call(teacher, fixture_dir):
    from diffusers import UNet2DConditionModel

    plain = UNet2DConditionModel.from_pretrained(fixture_dir / "unet").eval()  # no processors
    x, t, cond = _inputs()
    null = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        states = teacher.prompt(cond, null)
        want = plain(tile_views(x, 3, 2), teacher.timesteps(t), encoder_hidden_states=states)
        teacher.reference = False
        try:
            got = teacher(x, t, cond)
        finally:
            teacher.reference = True
        with_ref = teacher(x, t, cond)
    assert torch.allclose(got, untile_views(want.sample, 3, 2), atol=1e-6, rtol=0)
    assert (with_ref - got).abs().max() > 1e-4  # the reference changes the prediction


def test_reference_pass_runs_at_the_same_time_and_is_appended(teacher):
    calls, seen = [], {}
    hook = teacher.unet.register_forward_pre_hook(
        lambda m, args: calls.append((tuple(args[0].shape), args[1].clone()))
    )
    name = next(
        n for n, p in teacher.unet.attn_processors.items() if isinstance(p, ReferenceAttnProcessor)
    )
    proc = teacher.unet.attn_processors[name]
    inner = proc.inner

    def spy(attn, hs, ehs=None, mask=None, temb=None):
        seen.setdefault(proc.bank.mode, []).append(
            (hs.clone(), None if ehs is None else ehs.clone())
        )
        return inner(attn, hs, ehs, mask, temb)

    proc.inner = spy
    try:
        x, t, cond = _inputs()
        with torch.no_grad():
            teacher(x, t, cond)
    finally:
        proc.inner = inner
        hook.remove()
    assert [c[0] for c in calls] == [(2, 4, 8, 8), (2, 4, 24, 16)]  # reference, then main
    assert torch.equal(calls[0][1], calls[1][1])  # the same timestep
    ((ref_hs, _),) = seen["write"]
    ((main_hs, kv),) = seen["read"]
    n = main_hs.shape[1]
    assert kv.shape[1] == n + ref_hs.shape[1]  # keys/values longer: appended
    assert torch.equal(kv[:, :n], main_hs) and torch.equal(kv[:, n:], ref_hs)  # not replaced
    assert not proc.bank.states and proc.bank.mode == "off"


def test_guidance_null_branch_uses_the_zero_image_reference(teacher):
    x, t, cond = _inputs()
    zeros = torch.zeros_like(cond)
    both = torch.cat([cond, zeros])
    null = torch.tensor([False, False, True, True])
    with torch.no_grad():
        ref = teacher.reference_latent(both, null)
        zero_img = teacher.vae.encode(torch.zeros(2, 3, 16, 16)).latent_dist.mode()
        assert torch.allclose(ref[2:], zero_img, atol=1e-6)
        # the zero image in the VAE's normalised space, whatever the processor's mean
        saved = teacher.vae_pre
        teacher.vae_pre = {**saved, "mean": [0.3, 0.3, 0.3]}
        try:
            assert torch.allclose(teacher.reference_latent(zeros, null[2:]), zero_img, atol=1e-6)
        finally:
            teacher.vae_pre = saved
        states = teacher.prompt(both, null)
        assert torch.equal(states[2:], teacher.prompt_embeds.expand(2, -1, -1))  # text("") only
        assert not torch.allclose(states[:2], states[2:])
        g = guided(teacher, x, t, cond, 3.0)
        c, u = teacher(x, t, cond), teacher(x, t, zeros)
    assert torch.allclose(g, u + 3.0 * (c - u), atol=1e-5)


def test_latent_affine_and_image_scaling(teacher):
    img = torch.rand(1, 2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = teacher.encode(img)
        raw = teacher.vae.encode(img[0] * 0.5 / 0.8).latent_dist.mode()
        want = (raw * teacher.vae.config.scaling_factor - 0.22) * 0.75
        assert torch.allclose(z[0], want, atol=1e-6)
        out = teacher.decode(z)
        dec = teacher.vae.decode(raw).sample / 0.5 * 0.8
    assert torch.allclose(out[0], dec.clamp(-1, 1), atol=1e-5)


def test_samples_with_the_lab_samplers_on_the_trailing_grid(teacher):
    ts = teacher.sampling_times(4)
    assert ts[0] == pytest.approx(teacher.start_time) and ts[-1] == 0
    assert torch.all(ts[1:] < ts[:-1])
    cond = torch.rand(2, 3, 16, 16) * 2 - 1
    for sampler in ("euler", "ddim"):
        views, nfe = generate(teacher, cond, 2, [1, 2], sampler, guidance=2.0)
        assert views.shape == (2, 6, 3, 16, 16) and nfe == 4 and torch.isfinite(views).all()
    a, _ = generate(teacher, cond, 2, [1, 2], "euler")
    b, _ = generate(teacher, cond, 2, [1, 2], "euler")
    assert torch.equal(a, b)  # the reference noise is fixed: the teacher is deterministic


def _edit(folder, tmp_path, name, fn):
    out = tmp_path / name
    shutil.copytree(folder, out)
    fn(out)
    return out


def _edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize(
    "name, edit, reason",
    [
        (
            "unet_ramp",
            lambda f: _edit_json(f / "unet" / "config.json", ramping_coefficients=[0.1] * 77),
            "ramping_coefficients.*does not take.*reference-attention adapter does not",
        ),
        (
            "no_self_attention",
            lambda f: _edit_json(
                f / "unet" / "config.json",
                down_block_types=["DownBlock2D"] * 4,
                up_block_types=["UpBlock2D"] * 4,
            ),
            "without transformer blocks.*reference attention has no self-attention",
        ),
        (
            "only_cross",
            lambda f: _edit_json(f / "unet" / "config.json", only_cross_attention=True),
            "only_cross_attention.*reference attention needs self-attention",
        ),
        (
            "concat",
            lambda f: _edit_json(f / "unet" / "config.json", in_channels=8),
            "in_channels=8.*not concatenation",
        ),
        (
            "custom_pipeline",
            lambda f: _edit_json(f / "model_index.json", _class_name="HunYuan3DMVDPipeline"),
            "custom pipeline class 'HunYuan3DMVDPipeline'",
        ),
        (
            "no_index",
            lambda f: (f / "model_index.json").unlink(),
            "Zero123\\+\\+ components .*without a model_index.json.*without reference attention",
        ),
        (
            "no_ramp",
            lambda f: _edit_json(f / "model_index.json", ramping_coefficients=None),
            "no ramping_coefficients",
        ),
        (
            "controlnet",
            lambda f: _edit_json(
                f / "model_index.json", controlnet=["diffusers", "ControlNetModel"]
            ),
            "extra components controlnet",
        ),
    ],
)
def test_folders_the_lab_cannot_honour_are_refused(fixture_dir, tmp_path, name, edit, reason):
    folder = _edit(fixture_dir, tmp_path, name, edit)
    with pytest.raises(ValueError, match="refused: found .*" + reason):
        classify(folder)
    with pytest.raises(ValueError, match="refused"):
        load_teacher(folder)


def test_generic_folder_with_unknown_unet_keys_is_refused(tmp_path):
    from diffusers import DDPMScheduler
    from tiny_util import pixel_unet

    f = tmp_path / "px"
    pixel_unet().save_pretrained(f / "unet")
    DDPMScheduler().save_pretrained(f / "scheduler")
    assert classify(f).name == "diffusers"
    _edit_json(f / "unet" / "config.json", camera_dim=16)
    with pytest.raises(ValueError, match="keys camera_dim that UNet2DModel does not take"):
        load_teacher(f)


def test_an_mvdream_folder_without_its_adapter_is_refused_naming_it(tmp_path, monkeypatch):
    import teachers.io as io

    f = tmp_path / "mv"
    f.mkdir()
    index = {"_class_name": "MVDreamPipeline", "unet": ["mv_unet", "MultiViewUNetModel"]}
    (f / "model_index.json").write_text(json.dumps(index | {"image_encoder": [None, None]}))
    assert classify(f).name == "mvdream"
    monkeypatch.setattr(io, "MVDREAM_MODULE", "teachers.no_such_adapter")
    with pytest.raises(ValueError, match="teachers.no_such_adapter.*not installed"):
        load_teacher(f)


def test_teacher_inspect_prints_the_family_or_the_refusal(fixture_dir, tmp_path, capsys):
    from distill.cli import main

    assert main(["teacher", "inspect", str(fixture_dir)]) == 0
    out = capsys.readouterr().out
    for fact in ("family: zero123plus", "v (v_prediction)", "3 x 2 of 16 px", "(90, -10)"):
        assert fact in out, fact
    assert "reference attention" in out and "row-major" in out
    bad = _edit(fixture_dir, tmp_path, "bad", lambda f: (f / "model_index.json").unlink())
    assert main(["teacher", "inspect", str(bad)]) == 2
    assert "refused: found Zero123++ components" in capsys.readouterr().err


def test_recon_train_on_the_teachers_rig_refuses_contradicting_settings(fixture_dir):
    """`distill recon train teacher=FOLDER` takes views and rows from the folder; a recon.views
    that contradicts it is an error naming both, and defaults become the teacher's."""
    from dataclasses import replace

    from distill.recon_cmd import ReconTrainConfig, on_teacher_rig
    from recon.model import ReconConfig

    cfg = ReconTrainConfig(teacher=str(fixture_dir))
    rig = on_teacher_rig(cfg)
    assert (rig.recon.views, rig.recon.rows) == (6, 3)
    assert rig.world.target_elevations == [20.0, -10.0] * 3
    bad = replace(cfg, recon=ReconConfig(views=8, rows=2))
    with pytest.raises(ValueError, match=r"recon.views=8 but teacher .* makes 6 views in 3 rows"):
        on_teacher_rig(bad)
