"""LGM's camera convention against the lab's: known answers and round trips."""

import math

import pytest
import torch
import torch.nn.functional as F

from recon.cameras import GL_TO_CV, camera_rays, intrinsics, orbit_viewmat
from recon.gaussians import Gaussians, covariance
from recon.lgm import lgm_gaussians
from recon.lgm_cameras import (
    from_lgm_c2w,
    lab_to_lgm_frame,
    lgm_rays,
    orbit_c2w,
    similarity_scale,
    to_lgm_c2w,
)
from recon.lgm_rotation import raw_rotmat, rotmat_to_quat
from recon.raster import rasterize

AZ = [0.0, 90.0, 180.0, 270.0]


def _lab(els, distance=2.2):
    return torch.stack([orbit_viewmat(a, e, distance) for a, e in zip(AZ, els)])


def test_orbit_camera_known_answers():
    c = orbit_c2w(0, 0, 1.5)
    assert torch.allclose(
        c, torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1]])
    )
    assert torch.allclose(orbit_c2w(0, 90, 1.5)[:3, 3], torch.tensor([1.5, 0, 0]), atol=1e-6)
    # kiui's elevation sign: negative elevation is above (+y)
    assert orbit_c2w(-30, 0, 2.0)[1, 3] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("distance", [1.5, 2.2, 4.0])
def test_lab_rig_at_lgm_cameras_gives_lgm_default_poses(distance):
    vm = _lab([0.0] * 4, distance)
    c2w = to_lgm_c2w(vm, lab_to_lgm_frame(vm, 1.5))
    for i, a in enumerate(AZ):  # what core/models.py prepare_default_rays feeds at elevation 0
        assert torch.allclose(c2w[i], orbit_c2w(0, a, 1.5), atol=1e-5)


def test_lab_elevation_is_lgm_negative_elevation():
    vm = _lab([0.0, 20.0, 0.0, -10.0])
    c2w = to_lgm_c2w(vm, lab_to_lgm_frame(vm, 1.5))
    assert torch.allclose(c2w[1], orbit_c2w(-20, 90, 1.5), atol=1e-5)
    assert torch.allclose(c2w[3], orbit_c2w(10, 270, 1.5), atol=1e-5)


def test_cameras_round_trip():
    g = torch.Generator().manual_seed(0)
    vm = torch.stack(
        [orbit_viewmat(float(a), float(e), float(d)) for a, e, d in zip(
            torch.rand(4, generator=g) * 360, torch.rand(4, generator=g) * 60 - 30,
            torch.rand(4, generator=g) * 2 + 1.5)]
    ).double()  # fmt: skip
    a = lab_to_lgm_frame(vm, 1.5)
    back = from_lgm_c2w(to_lgm_c2w(vm, a), a)
    assert torch.allclose(back, vm, atol=1e-10)


def test_rays_are_the_lab_rays_carried_into_lgm_world():
    vm = _lab([0.0, 20.0, 0.0, -10.0]).double()
    K = intrinsics(8, 8, 49.1).double().expand(4, 3, 3)
    a = lab_to_lgm_frame(vm, 1.5)
    got = lgm_rays(to_lgm_c2w(vm, a), 8, 49.1)  # [4, 6, 8, 8]
    o, d = camera_rays(vm, K, 8, 8)
    s = similarity_scale(a)
    o2 = o @ a[:3, :3].T + a[:3, 3]
    d2 = d @ (a[:3, :3] / s).T
    want = torch.cat([torch.linalg.cross(o2, d2, dim=-1), d2], -1).movedim(-1, 1)
    assert torch.allclose(got, want, atol=1e-10)


def _render(g, vm, K, size=24):
    rgb, _, _ = rasterize(g, vm, K.expand(len(vm), 3, 3), size, size, background=torch.ones(3))
    return rgb


def test_gaussians_render_the_same_in_either_world():
    """LGM-world Gaussians seen by LGM's cameras = the converted Gaussians seen by the lab's."""
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(1, 200, 14, generator=g)
    raw[..., 0:3] *= 0.3
    raw[..., 4:7] -= 3.0
    vm = _lab([0.0, 20.0, 0.0, -10.0])
    K = intrinsics(24, 24, 49.1)
    a = lab_to_lgm_frame(vm, 1.5)[None]
    lab = lgm_gaussians(raw, a, "per_gaussian").map(lambda t: t[0])
    lgm = Gaussians(
        means=raw[0, :, 0:3].clamp(-1, 1),
        quats=F.normalize(raw[0, :, 7:11], dim=-1),
        scales=0.1 * F.softplus(raw[0, :, 4:7]),
        opacities=torch.sigmoid(raw[0, :, 3]),
        colors=0.5 * torch.tanh(raw[0, :, 11:]) + 0.5,
    )
    vm_lgm = torch.linalg.inv(to_lgm_c2w(vm, a[0]) @ GL_TO_CV)
    assert torch.allclose(_render(lab, vm, K), _render(lgm, vm_lgm, K), atol=2e-4)


def test_release_rotation_quirk_known_answer():
    """model_fp16.safetensors: quaternions normalised over the Gaussians (F.normalize's dim=1),
    then read unnormalised by the rasteriser. Four Gaussians with raw rotation (0, 1, 0, 0) get
    x = 1/2 each, so R~ = diag(1, 1/2, 1/2) and the covariance diag(s^2, s^2/4, s^2/4); the fixed
    activation gives a 180-degree turn about x and leaves diag(s^2) as it is."""
    raw = torch.zeros(1, 4, 14)
    raw[..., 7:11] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    s = 0.1 * math.log(2)  # 0.1 softplus(0)
    eye = torch.eye(4)[None]
    quirk = lgm_gaussians(raw, eye, "gaussian_axis")
    fixed = lgm_gaussians(raw, eye, "per_gaussian")
    want = torch.diag(torch.tensor([s * s, s * s / 4, s * s / 4]))
    assert torch.allclose(covariance(quirk.quats, quirk.scales)[0], want.expand(4, 3, 3), atol=1e-7)
    assert torch.allclose(
        covariance(fixed.quats, fixed.scales)[0], (s * s * torch.eye(3)).expand(4, 3, 3), atol=1e-7
    )
    assert torch.allclose(quirk.quats.norm(dim=-1), torch.ones(1, 4))


def test_quirk_covariance_is_the_rasterisers_in_the_lab_world():
    g = torch.Generator().manual_seed(2)
    raw = torch.randn(2, 50, 14, generator=g)
    vm = _lab([0.0] * 4).expand(2, 4, 4, 4)
    a = lab_to_lgm_frame(vm, 1.5)
    lab = lgm_gaussians(raw, a, "gaussian_axis")
    Rt = (
        raw_rotmat(F.normalize(raw[..., 7:11], dim=1))
        * (0.1 * F.softplus(raw[..., 4:7]))[..., None, :]
    )
    s = similarity_scale(a)[:, None, None, None]
    Q = a[:, None, :3, :3] / s
    M = Q.transpose(-1, -2) @ Rt / s
    assert torch.allclose(covariance(lab.quats, lab.scales), M @ M.transpose(-1, -2), atol=1e-7)


def test_rotmat_to_quat_round_trips():
    q = F.normalize(torch.randn(500, 4, generator=torch.Generator().manual_seed(3)), dim=-1)
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)
    assert torch.allclose(rotmat_to_quat(raw_rotmat(q)), q, atol=1e-5)
