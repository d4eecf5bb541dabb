"""The MVDream / ImageDream family: its multi-view attention, its cameras, its published layout,
and its tiny fixtures loading, sampling and distilling through the lab."""

import json
import math
import shutil

import pytest
import torch
from tiny_util import ROOT, script

from recon.cameras import orbit_viewmat
from teachers.mv_unet import Attention, MultiViewUNetModel, TransformerBlock3D
from teachers.mvdream import (
    MVDreamTeacher,
    describe,
    family_cameras,
    family_to_viewmat,
    viewmat_to_family,
)
from teachers.mvdream_folder import key_patterns


def _fixtures():
    return script("make_fixtures")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root, fx = tmp_path_factory.mktemp("mvdream"), _fixtures()
    return {name: getattr(fx, name)(root / name) for name in ("mvdream", "imagedream")}


# --- multi-view attention ---------------------------------------------------------------------


def _explicit_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head, written out, with the layer's own weights."""
    h = attn.heads
    q, k, v = (
        f(x).unflatten(-1, (h, -1)).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v)
    )
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return attn.to_out((w @ v).transpose(1, 2).flatten(2))


def test_multiview_attention_with_one_view_equals_per_view_self_attention():
    torch.manual_seed(0)
    block = TransformerBlock3D(32, 2, 16, context_dim=8, ip_dim=0, ip_weight=1.0).eval()
    x, ctx = torch.randn(6, 10, 32), torch.randn(6, 3, 8)
    one = block(x, ctx, num_frames=1)
    alone = torch.cat([block(x[i : i + 1], ctx[i : i + 1], num_frames=1) for i in range(6)])
    torch.testing.assert_close(one, alone, rtol=1e-5, atol=1e-5)
    # and the self-attention is plain softmax attention over the view's own tokens
    n = block.norm1(x[:1])
    torch.testing.assert_close(
        block.attn1(n), _explicit_attention(block.attn1, n), rtol=1e-5, atol=1e-5
    )


def test_multiview_attention_spans_the_views_of_one_object_only():
    """With 3 views per object, changing view 2 of object 0 changes its views 0-1 and leaves
    object 1 alone; with one view per object it changes nothing else."""
    torch.manual_seed(0)
    block = TransformerBlock3D(32, 2, 16, context_dim=8, ip_dim=0, ip_weight=1.0).eval()
    x, ctx = torch.randn(6, 10, 32), torch.randn(6, 3, 8)
    y = x.clone()
    y[2] += torch.randn(10, 32)  # (a constant shift would vanish in the LayerNorm)
    for frames, changed in ((3, [0, 1, 2]), (1, [2])):
        d = (block(x, ctx, frames) - block(y, ctx, frames)).abs().flatten(1).amax(1)
        assert [i for i in range(6) if d[i] > 1e-6] == changed


def test_image_prompt_attention_adds_the_image_tokens_attention():
    """attn2 with ip tokens = text attention + ip_weight x attention on to_k_ip/to_v_ip."""
    torch.manual_seed(0)
    attn = Attention(16, 8, 2, 8, ip_dim=4, ip_weight=0.7).eval()
    x, text, ip = torch.randn(2, 5, 16), torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    both = attn(x, torch.cat([text, ip], 1))
    attn.ip_dim = 0
    text_only = attn(x, text)
    k_ip, v_ip = attn.to_k_ip(ip).unflatten(-1, (2, -1)), attn.to_v_ip(ip).unflatten(-1, (2, -1))
    q = attn.to_q(x).unflatten(-1, (2, -1))
    w = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k_ip) / math.sqrt(8), -1)
    ip_out = torch.einsum("bhqk,bkhd->bqhd", w, v_ip).flatten(2) @ attn.to_out[0].weight.T
    torch.testing.assert_close(both, text_only + 0.7 * ip_out, rtol=1e-5, atol=1e-5)


# --- cameras --------------------------------------------------------------------------------


def _family_reference(azimuth: float, elevation: float) -> torch.Tensor:
    """The family's camera-to-world, built the way MVDream describes it (bytedance/MVDream
    camera_utils.py): a camera on the unit sphere of a y-up world (azimuth 0 on +z, 90 on
    +x) looking at the origin with OpenGL axes, then the world turned z-up: (x, y, z) ->
    (x, -z, y)."""
    a, e = math.radians(azimuth), math.radians(elevation)
    pos = torch.tensor([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    back = pos / pos.norm()
    right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), back)
    right = right / right.norm()
    up = torch.linalg.cross(back, right)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, pos
    to_z_up = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    return to_z_up @ c2w


def test_camera_conversion_gives_the_familys_matrices():
    # azimuth 0: the camera on -y looking at +y, up +z; azimuth 90: on +x looking at -x
    az0 = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, -1], [0, 1, 0, 0], [0, 0, 0, 1]])
    az90 = torch.tensor([[0.0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    for (a, e), want in (((0, 0), az0), ((90, 0), az90)):
        got = viewmat_to_family(orbit_viewmat(a, e, 2.2))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        torch.testing.assert_close(_family_reference(a, e), want, atol=1e-6, rtol=0)
    for a in (0.0, 45.0, 90.0, 180.0, 270.0, 333.0):
        for e in (-10.0, 0.0, 15.0, 30.0):
            got = viewmat_to_family(orbit_viewmat(a, e, 1.7))
            torch.testing.assert_close(got, _family_reference(a, e), atol=1e-5, rtol=0)


def test_camera_conversion_round_trips():
    for a, e, d in ((0.0, 0.0, 2.2), (90.0, 20.0, 1.0), (211.0, -12.0, 3.5), (330.0, 40.0, 2.0)):
        lab = orbit_viewmat(a, e, d).double()
        back = family_to_viewmat(viewmat_to_family(lab), d)
        torch.testing.assert_close(back, lab, atol=1e-6, rtol=0)  # (lab built in float32)


def test_imagedreams_condition_frame_has_a_zero_camera():
    cams = family_cameras([(0.0, 0.0), (90.0, 0.0)], extra_frame=True)
    assert cams.shape == (3, 16) and (cams[2] == 0).all() and cams[0, 15] == 1


# --- the published layout -------------------------------------------------------------------


@pytest.mark.parametrize("family", ["mvdream", "imagedream"])
def test_fixture_has_the_published_layout(family, folders):
    from safetensors import safe_open

    layout = json.loads((ROOT / "teachers" / "layouts" / f"{family}.json").read_text())
    folder = folders[family]
    index = json.loads((folder / "model_index.json").read_text())
    assert {k: v for k, v in index.items() if k != "_diffusers_version"} == layout["model_index"]
    ucfg = json.loads((folder / "unet" / "config.json").read_text())
    assert sorted(k for k in ucfg if not k.startswith("_")) == sorted(layout["unet_config"])
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert {k: sched[k] for k in layout["scheduler_config"]} == layout["scheduler_config"]
    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert key_patterns(f.keys()) == layout["unet_state_dict_patterns"]
    files = {
        "vae": ("config.json", "_class_name"),
        "text_encoder": ("config.json", "architectures"),
        "image_encoder": ("config.json", "architectures"),
        "feature_extractor": ("preprocessor_config.json", "image_processor_type"),
    }
    for part, (name, key) in files.items():
        want = layout["model_index"][part][1]
        if want is not None:  # the class each part's own config names
            named = json.loads((folder / part / name).read_text())[key]
            assert (named[0] if isinstance(named, list) else named) == want


def test_the_published_configs_build_the_published_size():
    """At the published config the UNet has SD 2.1's parameters plus the camera MLP."""
    layout = json.loads((ROOT / "teachers" / "layouts" / "mvdream.json").read_text())
    with torch.device("meta"):
        m = MultiViewUNetModel.from_published(layout["unet_config"])
    assert sum(p.numel() for p in m.parameters()) == 865_910_724 + 1_661_440


# --- the fixtures through the lab -----------------------------------------------------------


@pytest.mark.parametrize("family", ["mvdream", "imagedream"])
def test_fixture_loads_and_samples_with_the_labs_samplers(family, folders):
    t = MVDreamTeacher.from_pretrained(folders[family])
    assert t.info.kind == family and t.prediction == "eps" and t.path_name == "cosine"
    assert t.views == [(0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0)]
    assert t.noise_shape() == (4, 4, 8, 8) and t.record["family"] == family
    cond = torch.rand(1, 3, 16, 16) * 2 - 1
    for sampler in ("ddim", "euler"):
        views, nfe = t.sample(cond, 2, [0], sampler=sampler, guidance=2.0)
        assert views.shape == (1, 4, 3, 16, 16) and torch.isfinite(views).all() and nfe == 4
    again, _ = t.sample(cond, 2, [0], sampler="euler", guidance=2.0)
    torch.testing.assert_close(again, views)
    d = describe(folders[family])
    assert d["family"] == family and "epsilon" in d["parametrization"]
    assert [v["azimuth"] for v in d["cameras"]["views"]] == [0.0, 90.0, 180.0, 270.0]


def test_imagedreams_null_condition_is_zero_tokens_and_a_zero_latent(folders):
    """The lab's null condition (zeros) is the pipeline's unconditional branch: the negative
    prompt, zero image tokens and a zero condition frame; a real image changes the output."""
    t = MVDreamTeacher.from_pretrained(folders["imagedream"])
    g = torch.Generator().manual_seed(0)
    x, tt = torch.randn(1, 4, 4, 8, 8, generator=g), torch.tensor([0.5])
    with torch.no_grad():
        got = t(x, tt, torch.zeros(1, 3, 16, 16))
        f = 5
        ctx = t.negative_context[None].expand(f, -1, -1)
        ip = torch.zeros(f, *t.image_encoder.embeddings.position_embedding.weight.shape)
        want = t.unet(
            torch.cat([x[0], torch.zeros(1, 4, 8, 8)]), t.timesteps(tt).repeat(f), ctx,
            camera=t.cameras, num_frames=f, ip=ip, ip_img=torch.zeros(1, 4, 8, 8),
        )[:4]  # fmt: skip
        torch.testing.assert_close(got[0], want)
        other = t(x, tt, torch.rand(1, 3, 16, 16) * 2 - 1)
    assert (other - got).abs().max() > 1e-4


def test_a_folder_it_does_not_understand_is_refused(folders, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folders["mvdream"], bad)
    cfg_path = bad / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "use_scale_shift_norm": True}))
    with pytest.raises(ValueError, match="unsupported MultiViewUNetModel settings"):
        MVDreamTeacher.from_pretrained(bad)
    cfg_path.write_text(json.dumps({**cfg, "temporal_attention": True}))
    with pytest.raises(ValueError, match=r"unknown MultiViewUNetModel config keys \['temporal_"):
        MVDreamTeacher.from_pretrained(bad)
    cfg_path.write_text(json.dumps({**cfg, "model_channels": 64}))
    with pytest.raises(ValueError, match="weights do not match"):
        MVDreamTeacher.from_pretrained(bad)
    cfg_path.write_text(json.dumps(cfg))
    (bad / "multiview.json").write_text(json.dumps({"azimuths": [0, 90], "elevation": 5}))
    with pytest.raises(ValueError, match=r"unknown keys \['elevation'\]"):
        MVDreamTeacher.from_pretrained(bad)
    (bad / "multiview.json").unlink()
    index = json.loads((bad / "model_index.json").read_text())
    (bad / "model_index.json").write_text(json.dumps({**index, "_class_name": "OtherPipeline"}))
    with pytest.raises(ValueError, match="'OtherPipeline' with unet 'MultiViewUNetModel'"):
        MVDreamTeacher.from_pretrained(bad)
