"""`distill recon train|eval|run`: the fixed feed-forward Gaussian reconstructor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.config import DataSpec, load_config, save_config, to_dict
from recon.base import GaussianReconstructor
from recon.io import load_reconstructor
from recon.model import ReconConfig, Reconstructor
from recon.raster import rasterize
from scenes.data import open_eval_split, open_split
from scenes.model_views import recon_world
from scenes.rig import make_rig
from scenes.samples import unpack_gaussians
from scenes.world import WorldConfig, target_views, world_id
from training.checkpoints import start_from
from training.config import TrainConfig
from training.loop import train
from training.processes import across_processes, is_main, main_first, process_count, train_device


@dataclass
class ReconLossConfig:
    rgb: float = 1.0  # MSE of rendered colour
    mask: float = 0.5  # MSE of rendered alpha against the true silhouette
    depth: float = 0.2  # L1 of each input pixel's Gaussian depth against the true depth map
    render_views: int = 4  # views rendered per object per step (among inputs and held-out)


@dataclass
class ReconTrainConfig:
    run_dir: str = "runs/recon"  # checkpoints, logs, resolved config
    out: str = ""  # final reconstructor folder; default <run_dir>/recon
    init: str = ""  # start from this reconstructor folder's weights (a refinement stage)
    teacher: str = ""  # train on this teacher folder's rig (its cameras, views and grid rows)
    data: DataSpec = field(default_factory=DataSpec)
    world: WorldConfig = field(default_factory=WorldConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    loss: ReconLossConfig = field(default_factory=ReconLossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=8))


def on_teacher_rig(cfg: ReconTrainConfig) -> ReconTrainConfig:
    """The config with the world's target rig and the reconstructor's view count and grid rows
    taken from the teacher folder: the cameras its multiview.json (or its recorded world) names,
    so world data are rendered there and the sweep and serving can run that teacher through the
    result. Settings that contradict the teacher are an error naming both."""
    from dataclasses import replace

    from distill.train_cmd import student_world
    from teachers.io import load_teacher

    teacher = load_teacher(cfg.teacher)
    world = student_world(cfg.world, teacher)
    views, rows = teacher.info.views, teacher.info.grid[0]
    base = ReconConfig()
    for key, want in (("views", views), ("rows", rows)):
        have = getattr(cfg.recon, key)
        if have != getattr(base, key) and have != want:
            raise ValueError(
                f"recon.{key}={have} but teacher {cfg.teacher} makes {views} views in "
                f"{rows} rows: drop recon.{key} to train on the teacher's rig"
            )
    return replace(cfg, world=world, recon=replace(cfg.recon, views=views, rows=rows))


def _camera_depth(means: torch.Tensor, viewmats: torch.Tensor) -> torch.Tensor:
    """Camera z of points [B, V, P, 3] in their views' cameras [V, 4, 4] -> [B, V, P]."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return torch.einsum("vj,bvpj->bvp", R[:, 2], means) + t[:, 2][None, :, None]


def train_recon(args: list[str]) -> Path:
    cfg = load_config(ReconTrainConfig, args)
    if cfg.teacher:
        cfg = on_teacher_rig(cfg)
    if cfg.world.image_size != cfg.recon.image_size:
        raise ValueError(
            f"world.image_size={cfg.world.image_size} but recon.image_size={cfg.recon.image_size}"
        )
    run_dir = Path(cfg.run_dir)
    with main_first():  # one process makes the data; the others read it
        save_config(cfg, run_dir)
        ds = open_split(cfg.data.root, "train", cfg.data.train_count, cfg.world)
    rig = make_rig(cfg.world)
    size, n = cfg.world.image_size, cfg.data.train_count
    dev = train_device()  # the rig's tensors live where the steps run
    vm_in, K = rig.target_viewmats.to(dev), rig.K.to(dev)
    vm_all = torch.cat([vm_in, rig.heldout_viewmats.to(dev)])  # [C, 4, 4]
    n_cams, k = vm_all.shape[0], min(cfg.loss.render_views, vm_all.shape[0])
    white = torch.ones(3, device=dev)
    torch.manual_seed(cfg.train.seed)
    model = Reconstructor(cfg.recon)
    if cfg.init:
        start = Reconstructor.from_pretrained(cfg.init)
        if start.record.get("world_id") != world_id(cfg.world):
            raise ValueError(f"init reconstructor {cfg.init} was trained on another world")
        start_from(model, start, f"init reconstructor {cfg.init}", "recon")
    L = cfg.loss

    def step_fn(m, step, draws):
        b = ds.batch(draws.randint(0, n))
        bs = b["targets"].shape[0]
        g = m(b["targets"], vm_in, K.expand(len(vm_in), 3, 3))
        sel = torch.argsort(draws.rand(n_cams), dim=1)[:, :k]  # [B, k] cameras rendered
        vms = vm_all[sel]
        Ks = K.expand(bs, k, 3, 3)
        rgb, alpha, _ = rasterize(g, vms, Ks, size, size, background=white)
        images = torch.cat([b["targets"], b["heldout"]], 1)
        gt = images[torch.arange(bs)[:, None], sel].movedim(2, -1) * 0.5 + 0.5
        truth = unpack_gaussians(b["gaussians"])
        with torch.no_grad():
            _, gt_alpha, _ = rasterize(truth, vms, Ks, size, size)
            _, in_alpha, in_depth = rasterize(
                truth, vm_in.expand(bs, -1, -1, -1), K.expand(bs, len(vm_in), 3, 3), size, size
            )
        terms = {"rgb": ((rgb - gt) ** 2).mean(), "mask": ((alpha - gt_alpha) ** 2).mean()}
        z = _camera_depth(g.means.reshape(bs, len(vm_in), -1, 3), vm_in)
        covered = (in_alpha[..., 0] > 0.9).flatten(2)
        dz = (z - in_depth[..., 0].flatten(2)).abs()
        # masked mean over the global batch: the count is summed over processes, and DDP's
        # gradient average over N processes is undone by N (one process: the plain masked mean)
        count = across_processes(covered.sum().float()).clamp_min(1)
        terms["depth"] = (dz * covered).sum() * process_count() / count
        terms["loss"] = L.rgb * terms["rgb"] + L.mask * terms["mask"] + L.depth * terms["depth"]
        return terms

    t0 = time.perf_counter()
    model, ema, _ = train(run_dir, cfg.train, model, step_fn, desc="recon")
    if ema is not None:
        ema.copy_to(model)
    out = Path(cfg.out or run_dir / "recon")
    if not is_main():  # one process writes the reconstructor
        return out
    model.save_pretrained(
        out,
        record={
            "world_id": world_id(cfg.world),
            "train_config": to_dict(cfg),
            "command": "distill recon train " + " ".join(args),
            "train_seconds_last_run": round(time.perf_counter() - t0, 1),
            "steps": cfg.train.steps,
            "init": cfg.init,
        },
    )
    print(f"reconstructor saved to {out}")
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def recon_test_set(model: GaussianReconstructor, data_root: str, count: int):
    """The first ``count`` test objects for this reconstructor (made with its training world, or
    the world at its declared rig, if missing): the dataset, whose rig rendered the views, and
    the batch."""
    world = recon_world(model)
    ds = open_eval_split(data_root, "test", count, model.rig.image_size, world)
    if target_views(ds.world) != model.rig.views:
        raise ValueError(
            f"{Path(data_root) / 'test'}: views rendered at (azimuth, elevation) "
            f"{target_views(ds.world)}, but the reconstructor takes {model.rig.describe()}; "
            "point --data-root at data made at its rig"
        )
    return ds, ds.batch(list(range(count)))


def eval_recon(recon_dir: str, count: int, out: str, data_root: str, device: str = "auto") -> dict:
    """Held-out PSNR/SSIM, Chamfer and latency of the reconstructor and of the naive baseline
    on the first ``count`` test objects, with ground-truth views as input."""
    from eval.metrics import load_lpips
    from eval.recon_eval import evaluate, latency, unproject_baseline
    from eval.views import write_json

    dev = _device(device)
    model = load_reconstructor(recon_dir).to(dev)  # the lab's or an LGM folder
    ds, b = recon_test_set(model, data_root, count)
    rig = ds.rig
    vm, K = rig.target_viewmats, rig.K
    Ks = K.expand(len(vm), 3, 3)
    truth = unpack_gaussians(b["gaussians"]).means

    def reconstruct(v):
        return model(v.to(dev), vm.to(dev), Ks.to(dev))

    def baseline(v):
        return unproject_baseline(v.to(dev), vm.to(dev), Ks.to(dev), ds.world.distance)

    lp, reason = load_lpips()
    res = {"recon": recon_dir, "kind": model.kind, "objects": count, "split": "test"}
    res.update(
        evaluate(reconstruct, b["targets"], b["heldout"], truth, rig.heldout_viewmats, K, lpips=lp)
    )
    res.update(latency(reconstruct, b["targets"], rig.heldout_viewmats, K, dev))
    base = evaluate(baseline, b["targets"], b["heldout"], truth, rig.heldout_viewmats, K)
    base.update(latency(baseline, b["targets"], rig.heldout_viewmats, K, dev))
    res["baseline"] = {"name": "unproject input pixels at the rig distance", **base}
    res["psnr_gain_db"] = res["psnr"] - base["psnr"]
    if lp is None:
        res["lpips"] = None
        res["lpips_missing"] = reason
    path = write_json(res, Path(out) / "recon_eval.json")
    print(
        f"reconstructor: PSNR {res['psnr']:.2f} dB  SSIM {res['ssim']:.3f}  Chamfer "
        f"{res['chamfer']:.4f}  recon {res['recon_ms']:.1f} ms  render {res['render_ms']:.1f} ms"
        f" ({res['render_views']} views, {res['device']})\n"
        f"baseline:      PSNR {base['psnr']:.2f} dB  SSIM {base['ssim']:.3f}  Chamfer "
        f"{base['chamfer']:.4f}\n"
        f"gain {res['psnr_gain_db']:.2f} dB over {count} test objects; wrote {path}"
    )
    return res


def read_views(path: str, size: int, views: int, rows: int, rig):
    """Input views from a 2x2 grid PNG, a folder of PNGs (rig cameras), or a NeRF-synthetic
    folder (its own cameras). Returns views [V, 3, H, W] in [-1, 1], viewmats, Ks."""

    from scenes.nerf import load_nerf_folder

    p = Path(path)
    Ks = rig.K.expand(views, 3, 3)
    if p.is_dir() and (p / "transforms.json").exists():
        posed = load_nerf_folder(p)
        imgs, vm, Ks = posed.images, posed.viewmats, posed.Ks
    elif p.is_dir():
        files = sorted(p.glob("*.png"))
        if len(files) != views:
            raise ValueError(f"{p}: found {len(files)} PNG views, the reconstructor takes {views}")
        imgs = torch.stack([_load_png(f) for f in files])
        vm = rig.target_viewmats
    elif p.is_file():
        grid = _load_png(p)
        cols = views // rows
        h, w = grid.shape[-2] // rows, grid.shape[-1] // cols
        if grid.shape[-2] != rows * size or grid.shape[-1] != cols * size:
            raise ValueError(
                f"{p}: a {rows}x{cols} grid of {size}px views must be {cols * size}x{rows * size} "
                f"pixels, got {grid.shape[-1]}x{grid.shape[-2]}"
            )
        imgs = grid.reshape(3, rows, h, cols, w).permute(1, 3, 0, 2, 4).reshape(views, 3, h, w)
        vm = rig.target_viewmats
    else:
        raise FileNotFoundError(f"views {p} not found (a PNG grid or a folder)")
    if imgs.shape[0] != views:
        raise ValueError(f"{p}: {imgs.shape[0]} views, the reconstructor takes {views}")
    if imgs.shape[-2:] != (size, size):
        raise ValueError(
            f"{p}: views are {imgs.shape[-1]}x{imgs.shape[-2]}, expected {size}x{size}"
        )
    return imgs, vm, Ks


def _load_png(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    try:
        img = Image.open(path).convert("RGBA")
    except Exception as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    a = np.asarray(img, dtype=np.float32) / 255.0
    rgb = a[..., :3] * a[..., 3:] + (1 - a[..., 3:])
    return torch.from_numpy(rgb).permute(2, 0, 1) * 2 - 1


def run_recon(recon_dir: str, views: str, out: str, renders: str | None, device: str = "auto"):
    """Reconstruct one object from its views; write the 3DGS PLY and optionally a render sheet."""
    from eval.recon_eval import render_images
    from recon.cameras import orbit_viewmat
    from recon.gaussians import save_ply
    from scenes.preview import contact_sheet

    dev = _device(device)
    model = load_reconstructor(recon_dir).to(dev)  # the lab's or an LGM folder
    size, n = model.rig.image_size, len(model.rig.azimuths)
    world = recon_world(model)
    rig = make_rig(world)
    grid_rows = getattr(model.cfg, "rows", 2 if n % 2 == 0 else 1)  # LGM: 4 views, 2x2 grid
    imgs, vm, Ks = read_views(views, size, n, grid_rows, rig)
    with torch.inference_mode():
        g = model(imgs[None].to(dev), vm.to(dev), Ks.to(dev))
    save_ply(g.map(lambda t: t[0]), out)
    print(f"wrote {out} ({g.count} Gaussians)")
    if renders:
        orbit = torch.stack(
            [orbit_viewmat(a, world.target_elevation, world.distance) for a in range(0, 360, 45)]
        )
        with torch.inference_mode():
            imgs_orbit = render_images(g, orbit.to(dev), rig.K.to(dev), size)[0].cpu()
        rows = [
            ("input views", imgs, None),
            ("renders", imgs_orbit, [f"az {a}" for a in range(0, 360, 45)]),
        ]
        contact_sheet(rows, renders, title="reconstruction")
        print(f"wrote {renders}")
    return g
