"""Parity with diffusers: the lab's DDIM / Euler sampling of a diffusers-format teacher equals
diffusers' own scheduler loop on the same UNet, initial noise and timesteps (float32, max abs
difference 1e-4). This is the proof that the adapter's timestep <-> lab time mapping is right.

A random eps-prediction UNet does not predict the noise it is given, so its x0 = (x - sigma
eps) / alpha reaches |x| ~ 400 at alpha ~ 0.006; there the bound is 1e-4 of the samples' largest
magnitude (a few float32 ulps), elsewhere (|x| <= 1) it is 1e-4 absolute."""

import json

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from tiny_util import pixel_unet

from samplers.paths import get_path
from samplers.sampling import Denoiser, generate, generators_for, get_sampler, per_sample_noise
from teachers.base import tile_views, untile_views
from teachers.io import load_teacher

STEPS = (1, 4, 25)
TOL = 1e-4

DDPM_FAMILY = [
    (cls, beta, pred)
    for cls in (DDIMScheduler, DDPMScheduler)
    for beta in ("linear", "scaled_linear", "squaredcos_cap_v2")
    for pred in ("epsilon", "v_prediction")
]


def _teacher(folder, scheduler) -> torch.nn.Module:
    pixel_unet(perturb=True).save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "multiview.json").write_text(json.dumps({"rows": 2, "cols": 2, "image_size": 8}))
    return load_teacher(folder)


@torch.no_grad()
def _diffusers_loop(teacher, scheduler, steps, noise, cond):
    """What a diffusers pipeline does: the scheduler's timesteps, the UNet on the tiled grid with
    the condition concatenated, ``scheduler.step`` (deterministic: DDIM eta = 0, flow Euler)."""
    scheduler.set_timesteps(steps)
    x = noise.clone()
    b, v = x.shape[:2]
    c = cond[:, None].expand(b, v, *cond.shape[1:])
    zero = torch.zeros(b, teacher.time_embed_dim)  # the adapter's extra-embedding port, unused
    for k in scheduler.timesteps:
        grid = tile_views(torch.cat([x, c], 2), 2, 2)
        out = untile_views(teacher.unet(grid, k, class_labels=zero).sample, 2, 2)
        x = scheduler.step(out, k, x).prev_sample
    return x


@torch.no_grad()
def _lab(teacher, sampler, steps, noise, cond):
    den = Denoiser(teacher, get_path(teacher.path_name), teacher.prediction)
    return get_sampler(sampler)(den, noise.clone(), teacher.sampling_times(steps), cond)


def _close(got, ref) -> float:
    """Max abs difference over the bound (<= 1 passes)."""
    return (got - ref).abs().max().item() / (TOL * max(1.0, ref.abs().max().item()))


def _inputs(teacher, seeds=(3, 4)):
    noise = per_sample_noise(teacher.noise_shape(), generators_for(list(seeds)))
    cond = torch.rand(len(seeds), 3, 8, 8, generator=torch.Generator().manual_seed(9)) * 2 - 1
    return noise, cond


@pytest.mark.parametrize("cls,beta,pred", DDPM_FAMILY, ids=lambda x: getattr(x, "__name__", x))
def test_ddim_matches_diffusers(tmp_path, cls, beta, pred):
    """DDIM/DDPM folders: the lab's DDIM and Euler (the same step on the cosine path) against
    DDIMScheduler made from the folder's config, as a diffusers user samples a DDPM model."""
    sched = cls(beta_schedule=beta, prediction_type=pred, clip_sample=False)
    teacher = _teacher(tmp_path / "t", sched)
    noise, cond = _inputs(teacher)
    for steps in STEPS:
        ref = _diffusers_loop(teacher, DDIMScheduler.from_config(sched.config), steps, noise, cond)
        assert torch.isfinite(ref).all()
        for sampler in ("ddim", "euler"):
            got = _lab(teacher, sampler, steps, noise, cond)
            err = (got - ref).abs().max().item()
            assert _close(got, ref) <= 1, f"{sampler} at {steps} steps: max abs diff {err:.2e}"


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timestep_spacing_and_offset(tmp_path, spacing):
    """Every timestep_spacing (with steps_offset = 1) gives diffusers' timesteps. With
    ``linspace`` diffusers' DDIM steps from k to k - N // steps (999 -> 749 at 4 steps) while its
    next timestep is 666: the lab follows the timesteps, so samples are compared for the
    spacings whose steps are the gaps between timesteps."""
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        timestep_spacing=spacing,
        steps_offset=1,
        clip_sample=False,
    )
    teacher = _teacher(tmp_path / "t", sched)
    noise, cond = _inputs(teacher)
    for steps in STEPS:
        ts = teacher.sampling_times(steps)
        sched.set_timesteps(steps)
        assert torch.equal(teacher.timesteps(ts[:-1].float()).float(), sched.timesteps.float())
        if spacing != "linspace":
            ref = _diffusers_loop(teacher, sched, steps, noise, cond)
            assert _close(_lab(teacher, "ddim", steps, noise, cond), ref) <= 1


def test_zero_terminal_snr(tmp_path):
    """rescale_betas_zero_snr: the last timestep is pure noise (lab t = 1), v-prediction lands
    on the same samples as diffusers, nothing is NaN."""
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
    )
    teacher = _teacher(tmp_path / "t", sched)
    assert teacher.start_time == pytest.approx(1.0, abs=1e-6)
    noise, cond = _inputs(teacher)
    for steps in STEPS:
        assert float(teacher.sampling_times(steps)[0]) == pytest.approx(1.0, abs=1e-6)
        ref = _diffusers_loop(teacher, sched, steps, noise, cond)
        got = _lab(teacher, "ddim", steps, noise, cond)
        assert torch.isfinite(got).all() and _close(got, ref) <= 1


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_matching_euler_matches_diffusers(tmp_path, shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    teacher = _teacher(tmp_path / "t", sched)
    assert (teacher.path_name, teacher.prediction) == ("linear", "velocity")
    noise, cond = _inputs(teacher)
    for steps in STEPS:
        ref = _diffusers_loop(
            teacher, FlowMatchEulerDiscreteScheduler.from_config(sched.config), steps, noise, cond
        )
        got = _lab(teacher, "euler", steps, noise, cond)
        err = (got - ref).abs().max().item()
        assert err <= TOL, f"euler at {steps} steps: max abs diff {err:.2e}"  # |x| ~ 1 here


def test_generate_samples_on_the_scheduler_grid(tmp_path):
    """``generate`` (what the sweep and serving call) uses the teacher's own grid and noise."""
    sched = DDIMScheduler(beta_schedule="linear", prediction_type="epsilon", clip_sample=False)
    teacher = _teacher(tmp_path / "t", sched)
    noise, cond = _inputs(teacher, seeds=(3, 4))
    views, nfe = generate(teacher, cond, 4, [3, 4], "ddim", decode=False)
    ref = _diffusers_loop(teacher, sched, 4, noise, cond)
    assert nfe == 4 and _close(views, ref) <= 1


def test_dynamic_shifting_is_a_clear_error(tmp_path):
    teacher = _teacher(tmp_path / "t", FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        teacher.sampling_times(4)
