import json
import math

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from tiny_util import pixel_unet, tiny_vae

from samplers.sampling import generate
from teachers.io import load_teacher


def _pixel_teacher(folder, prediction="v_prediction"):
    pixel_unet().save_pretrained(folder / "unet")
    DDPMScheduler(beta_schedule="scaled_linear", prediction_type=prediction).save_pretrained(
        folder / "scheduler"
    )
    (folder / "multiview.json").write_text(json.dumps({"rows": 2, "cols": 2, "image_size": 8}))
    return folder


def test_pixel_unet_teacher_loads_and_samples(tmp_path):
    t = load_teacher(_pixel_teacher(tmp_path / "px"))
    assert t.info.kind == "diffusers" and t.path_name == "cosine" and t.prediction == "v"
    assert t.noise_shape() == (4, 3, 8, 8)
    cond = torch.rand(2, 3, 8, 8) * 2 - 1
    views, nfe = generate(t, cond, 2, [1, 2], "ddim")
    assert views.shape == (2, 4, 3, 8, 8) and nfe == 2 and torch.isfinite(views).all()
    # an extra embedding of zeros leaves the teacher unchanged
    x, tt = torch.randn(2, 4, 3, 8, 8), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        assert torch.equal(t(x, tt, cond), t(x, tt, cond, emb=torch.zeros(2, t.time_embed_dim)))


def test_ddpm_timesteps_match_the_lab_cosine_path(tmp_path):
    t = load_teacher(_pixel_teacher(tmp_path / "px"))
    ac = DDPMScheduler(beta_schedule="scaled_linear").alphas_cumprod.double()
    ts = torch.linspace(0.05, 0.95, 19)
    k = t.timesteps(ts).double()
    lo, frac = k.floor().long(), k - k.floor()
    hi = (lo + 1).clamp(max=999)
    lam = lambda a: torch.log(a) - torch.log1p(-a)  # noqa: E731
    lam_k = (1 - frac) * lam(ac[lo]) + frac * lam(ac[hi])
    want = 2 * torch.log(1 / torch.tan(0.5 * math.pi * ts.double()))
    inside = (want < lam(ac[0])) & (want > lam(ac[-1]))
    assert inside.sum() > 10
    assert torch.allclose(lam_k[inside], want[inside], atol=1e-6)
    assert torch.all(k[1:] > k[:-1])  # more noise, later timestep


def test_latent_condition_unet_3x2_grid(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "lat"
    tiny_vae().save_pretrained(folder / "vae")
    unet = UNet2DConditionModel(
        sample_size=(24, 16),
        in_channels=8,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=16,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(prediction_type="epsilon").save_pretrained(folder / "scheduler")
    (folder / "multiview.json").write_text(json.dumps({"rows": 3, "cols": 2, "image_size": 16}))
    t = load_teacher(folder)
    assert t.info.views == 6 and t.noise_shape() == (6, 4, 8, 8) and t.prediction == "eps"
    views, _ = generate(t, torch.zeros(1, 3, 16, 16), 2, [0], "dpmpp")
    assert views.shape == (1, 6, 3, 16, 16)


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_teacher(tmp_path / "nothing")
    f = _pixel_teacher(tmp_path / "a")
    (f / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_teacher(f)
    f = _pixel_teacher(tmp_path / "b", prediction="sample")
    cfg = json.loads((f / "scheduler" / "scheduler_config.json").read_text())
    cfg["prediction_type"] = "flow_prediction"
    (f / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="prediction_type 'flow_prediction' is not supported"):
        load_teacher(f)
    f = _pixel_teacher(tmp_path / "c")
    w = f / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:500])
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors: corrupt"):
        load_teacher(f)
    f = _pixel_teacher(tmp_path / "d")
    cfg = json.loads((f / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = [16, 48]
    (f / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="weights do not match"):
        load_teacher(f)


def test_eps_ddpm_teacher_starts_at_its_last_trained_timestep(tmp_path):
    """An eps-prediction DDPM teacher samples from its last trained timestep (still some signal
    there), not from pure noise, so no step divides by alpha = 0: outputs stay finite and bounded
    with every sampler."""
    t = load_teacher(_pixel_teacher(tmp_path / "eps", prediction="epsilon"))
    ac = DDPMScheduler(beta_schedule="scaled_linear").alphas_cumprod.double()
    want = 2 / math.pi * math.acos(math.sqrt(float(ac[-1])))  # cos^2(pi t / 2) = alpha_bar
    assert t.prediction == "eps" and t.start_time == pytest.approx(want, abs=1e-6)
    assert float(t.timesteps(torch.tensor([t.start_time]))) == pytest.approx(999, abs=1e-3)
    cond = torch.rand(2, 3, 8, 8) * 2 - 1
    for sampler in ("euler", "ddim", "heun", "dpmpp"):
        for steps in (1, 4):
            views, _ = generate(t, cond, steps, [1, 2], sampler, decode=False)
            assert torch.isfinite(views).all() and views.abs().max() < 1e3, (sampler, steps)
