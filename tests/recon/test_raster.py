import math

import pytest
import torch

from recon.cameras import intrinsics, orbit_viewmat
from recon.gaussians import Gaussians, load_ply, save_ply
from recon.raster import rasterize, rasterize_dense


def _scene(n=40, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=g, dtype=dtype) * 0.35,
        quats=torch.randn(n, 4, generator=g, dtype=dtype),
        scales=torch.rand(n, 3, generator=g, dtype=dtype) * 0.08 + 0.02,
        opacities=torch.rand(n, generator=g, dtype=dtype) * 0.85 + 0.1,
        colors=torch.rand(n, 3, generator=g, dtype=dtype),
    )


def _cams(size, dtype=torch.float64, angles=((0, 20), (100, -10), (230, 50))):
    vm = torch.stack([orbit_viewmat(a, e, 2.0) for a, e in angles]).to(dtype)
    K = intrinsics(size, size, 45.0).to(dtype).expand(len(angles), 3, 3)
    return vm, K


def brute_force(g, viewmat, K, W, H, bg):
    """gsplat's math written out literally, one Gaussian and one pixel at a time."""
    fx, fy, cx, cy = K[0, 0].item(), K[1, 1].item(), K[0, 2].item(), K[1, 2].item()
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    splats = []
    for i in range(g.means.shape[0]):
        p = R @ g.means[i] + t
        x, y, z = p.tolist()
        if z < 0.01:
            continue
        q = g.quats[i] / g.quats[i].norm()
        w_, qx, qy, qz = q.tolist()
        rot = torch.tensor(
            [
                [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - w_ * qz), 2 * (qx * qz + w_ * qy)],
                [2 * (qx * qy + w_ * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - w_ * qx)],
                [2 * (qx * qz - w_ * qy), 2 * (qy * qz + w_ * qx), 1 - 2 * (qx * qx + qy * qy)],
            ],
            dtype=g.means.dtype,
        )
        cov = rot @ torch.diag(g.scales[i] ** 2) @ rot.T
        covc = R @ cov @ R.T
        limx = 1.3 * 0.5 * W / fx
        limy = 1.3 * 0.5 * H / fy
        tx = z * min(limx, max(-limx, x / z))
        ty = z * min(limy, max(-limy, y / z))
        J = torch.tensor(
            [[fx / z, 0, -fx * tx / z**2], [0, fy / z, -fy * ty / z**2]], dtype=g.means.dtype
        )
        c2 = J @ covc @ J.T + 0.3 * torch.eye(2, dtype=g.means.dtype)
        conic = torch.linalg.inv(c2)
        splats.append(
            (z, fx * x / z + cx, fy * y / z + cy, conic, g.opacities[i].item(), g.colors[i])
        )
    splats.sort(key=lambda s: s[0])
    rgb = torch.zeros(H, W, 3, dtype=g.means.dtype)
    alpha = torch.zeros(H, W, 1, dtype=g.means.dtype)
    for py in range(H):
        for px in range(W):
            T, acc = 1.0, torch.zeros(3, dtype=g.means.dtype)
            for _z, mx, my, con, op, col in splats:
                dx, dy = mx - (px + 0.5), my - (py + 0.5)
                s = 0.5 * (con[0, 0] * dx * dx + con[1, 1] * dy * dy) + con[0, 1] * dx * dy
                a = min(0.999, op * math.exp(-s))
                if s < 0 or a < 1 / 255:
                    continue
                if T * (1 - a) <= 1e-4:
                    break
                acc = acc + a * T * col
                T = T * (1 - a)
            rgb[py, px] = acc + T * bg
            alpha[py, px] = 1 - T
    return rgb, alpha


def test_tiled_matches_brute_force_reference():
    g = _scene(30, seed=1)
    vm, K = _cams(12)
    bg = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    rgb, alpha, _ = rasterize(g, vm, K, 12, 12, background=bg)
    for c in range(vm.shape[0]):
        ref_rgb, ref_alpha = brute_force(g, vm[c], K[c], 12, 12, bg)
        assert torch.allclose(rgb[c], ref_rgb, atol=1e-4, rtol=0)
        assert torch.allclose(alpha[c], ref_alpha, atol=1e-4, rtol=0)
    assert alpha.max() > 0.5  # the scene is actually visible


def test_tiled_matches_dense_on_world_object():
    from scenes.objects import make_object
    from scenes.rig import make_rig
    from scenes.world import WorldConfig

    cfg = WorldConfig(gaussians=1024, image_size=24)
    g = make_object(5, cfg).to(torch.float64)
    rig = make_rig(cfg)
    vm = rig.heldout_viewmats.double()
    K = rig.K.double().expand(vm.shape[0], 3, 3)
    rgb, alpha, depth = rasterize(g, vm, K, 24, 24, background=torch.ones(3))
    for c in range(vm.shape[0]):
        r, a, d = rasterize_dense(g, vm[c], K[c], 24, 24, torch.ones(3, dtype=torch.float64))
        assert torch.allclose(rgb[c], r, atol=1e-10)
        assert torch.allclose(alpha[c], a, atol=1e-10)
        assert torch.allclose(depth[c], d, atol=1e-8)
    # the object is opaque enough that many pixels stop early, the case the tiles optimise
    assert (alpha > 0.9999 - 1e-6).float().mean() > 0.005
    # expected depth of covered pixels lies around the camera distance
    cov = alpha[..., 0] > 0.5
    assert ((depth[..., 0][cov] - cfg.distance).abs() < cfg.object_radius + 0.05).all()


def test_gradcheck_float64():
    g = _scene(6, seed=3)
    g.opacities = g.opacities.clamp(0.2, 0.9)
    vm, K = _cams(8, angles=((20, 10), (200, 30)))
    leaves = [
        t.clone().requires_grad_(True) for t in (g.means, g.quats, g.scales, g.opacities, g.colors)
    ]

    def f(means, quats, scales, opacities, colors):
        rgb, alpha, depth = rasterize(
            Gaussians(means, quats, scales, opacities, colors),
            vm,
            K,
            8,
            8,
            background=torch.ones(3, dtype=torch.float64),
        )
        return rgb, alpha, depth

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5)


def test_batched_equals_per_object():
    gs = [_scene(25, seed=s, dtype=torch.float32) for s in (4, 5)]
    batch = Gaussians(**{k: torch.stack([g.as_dict()[k] for g in gs]) for k in gs[0].as_dict()})
    vm, K = _cams(16, dtype=torch.float32)
    vmb = torch.stack([vm, vm.flip(0)])
    Kb = torch.stack([K, K])
    rgb, alpha, depth = rasterize(batch, vmb, Kb, 16, 16, background=torch.ones(3))
    assert rgb.shape == (2, 3, 16, 16, 3) and alpha.shape == depth.shape == (2, 3, 16, 16, 1)
    for b in range(2):
        r, a, d = rasterize(gs[b], vmb[b], Kb[b], 16, 16, background=torch.ones(3))
        assert torch.allclose(rgb[b], r, atol=1e-6)


def test_empty_and_behind_camera():
    g = _scene(5, seed=6)
    g.means = g.means + torch.tensor([10.0, 0, 0], dtype=torch.float64)  # behind camera at +x
    vm, K = _cams(8, angles=((0, 0),))
    rgb, alpha, _ = rasterize(g, vm, K, 8, 8, background=torch.ones(3))
    assert alpha.abs().max() == 0 and torch.all(rgb == 1)


def test_camera_shape_errors():
    g = _scene(5)
    vm, K = _cams(8)
    with pytest.raises(ValueError, match="viewmats must be"):
        rasterize(g, vm[:, :3], K, 8, 8)
    with pytest.raises(ValueError, match="Ks must be"):
        rasterize(g, vm, K[:, :2], 8, 8)
    with pytest.raises(ValueError, match="disagree"):
        rasterize(g, vm, K[:2], 8, 8)
    with pytest.raises(ValueError, match="batch dims"):
        rasterize(g, vm[None].expand(2, -1, -1, -1), K[None].expand(2, -1, -1, -1), 8, 8)
    with pytest.raises(ValueError, match="opacities"):
        Gaussians(g.means, g.quats, g.scales, g.opacities[:3], g.colors)


def test_ply_round_trip(tmp_path):
    g = _scene(50, seed=7, dtype=torch.float32)
    g.quats = g.quats / g.quats.norm(dim=-1, keepdim=True)
    save_ply(g, tmp_path / "o.ply")
    header = (tmp_path / "o.ply").read_bytes()[:600].decode("ascii", "ignore")
    for name in ("f_dc_0", "opacity", "scale_2", "rot_3", "element vertex 50"):
        assert name in header
    h = load_ply(tmp_path / "o.ply")
    for k, v in g.as_dict().items():
        assert torch.allclose(getattr(h, k), v, atol=1e-5), k
    (tmp_path / "bad.ply").write_bytes(b"not a ply")
    with pytest.raises(ValueError, match="not a PLY"):
        load_ply(tmp_path / "bad.ply")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat")
def test_gsplat_parity_cuda():
    from recon.raster import rasterize_cpu

    g = _scene(400, seed=8, dtype=torch.float32)
    vm, K = _cams(32, dtype=torch.float32)
    bg = torch.ones(3)
    rgb_cpu, a_cpu, d_cpu = rasterize_cpu(
        g.map(lambda t: t[None].expand((3,) + t.shape)), vm, K, 32, 32, bg
    )
    rgb, a, d = rasterize(g.to("cuda"), vm.cuda(), K.cuda(), 32, 32, background=bg.cuda())
    assert torch.allclose(rgb.cpu(), rgb_cpu, atol=2e-3)
    assert torch.allclose(a.cpu(), a_cpu, atol=2e-3)


def test_gaussian_weights_are_the_one_hot_render_maxima():
    """gaussian_weights gives each Gaussian's largest compositing weight over the pixels: what a
    render with one-hot colours shows in that Gaussian's channel."""
    from recon.cameras import intrinsics, orbit_viewmat
    from recon.gaussians import Gaussians
    from recon.raster import gaussian_weights, rasterize
    from scenes.objects import make_object
    from scenes.world import WorldConfig

    g = make_object(3, WorldConfig(image_size=16, gaussians=64))
    vm, K = orbit_viewmat(0.0, 5.0, 2.2)[None], intrinsics(16, 16, 40.0)[None]
    one_hot = Gaussians(g.means, g.quats, g.scales, g.opacities, torch.eye(64))
    w, _, _ = rasterize(one_hot.map(lambda t: t[None]), vm[None], K[None], 16, 16)
    got = gaussian_weights(g.map(lambda t: t[None]), vm, K, 16, 16)
    assert got.shape == (1, 64) and torch.equal(got[0], w[0, 0].flatten(0, 1).amax(0))
