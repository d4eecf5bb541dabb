"""`distill encoder train`: the in-domain feature encoder used for FID/KID in the sweep."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.config import DataSpec, load_config, save_config, to_dict
from eval.distribution import distribution_distances
from eval.encoder import FeatureEncoder
from scenes.data import open_split
from scenes.objects import object_attributes
from scenes.world import WorldConfig, world_id
from training.config import TrainConfig
from training.loop import train
from training.processes import is_main, main_first, train_device, unwrap

LABEL_SCALE = torch.tensor([1.0, 1, 1, 1, 0.25, 1, 1, 1, 1, 1, 1])  # counts ~1, stripes ~0-8


@dataclass
class EncoderTrainConfig:
    run_dir: str = "runs/encoder"
    out: str = ""  # default <run_dir>/encoder
    width: int = 32  # channels of the first conv (x1, x2, x4, x4)
    val_count: int = 256  # val objects for the recorded figures
    data: DataSpec = field(default_factory=DataSpec)
    world: WorldConfig = field(default_factory=WorldConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=1500,
            batch_size=128,
            lr=1e-3,
            warmup=50,
            schedule="cosine",
            ema_decay=0.0,
            ckpt_every=500,
        )
    )


def _labels(seeds, world) -> torch.Tensor:
    return torch.stack([object_attributes(int(s), world) for s in seeds]) * LABEL_SCALE


def _views(b) -> torch.Tensor:
    return torch.cat([b["targets"], b["heldout"]], 1)  # [B, 12, 3, H, W]


def train_encoder(args: list[str]) -> Path:
    cfg = load_config(EncoderTrainConfig, args)
    run_dir = Path(cfg.run_dir)
    with main_first():  # one process makes the data; the others read it
        save_config(cfg, run_dir)
        ds = open_split(cfg.data.root, "train", cfg.data.train_count, cfg.world)
    n = cfg.data.train_count
    labels = _labels(ds.data["seeds"][:n], cfg.world).to(train_device())
    torch.manual_seed(cfg.train.seed)
    model = FeatureEncoder(labels.shape[1], cfg.width)

    def step_fn(m, step, draws):
        idx = draws.randint(0, n)
        views = _views(ds.batch(idx))
        v = draws.randint(0, views.shape[1])
        img = views[torch.arange(len(idx)), v]
        pred = unwrap(m).head(m(img))
        return {"loss": F.mse_loss(pred, labels[idx])}

    t0 = time.perf_counter()
    model, _, _ = train(run_dir, cfg.train, model, step_fn, desc="encoder")
    out = Path(cfg.out or run_dir / "encoder")
    if not is_main():  # one process measures and writes the encoder
        return out
    model.eval()
    val = open_split(cfg.data.root, "val", cfg.val_count, cfg.world)
    vb = val.batch(list(range(cfg.val_count)))
    views = _views(vb).flatten(0, 1)
    vlab = _labels(vb["seeds"], cfg.world).repeat_interleave(12, 0)
    with torch.no_grad():
        pred = torch.cat([model.predict(views[i : i + 512]) for i in range(0, len(views), 512)])
    r2 = 1 - ((pred - vlab) ** 2).sum(0) / ((vlab - vlab.mean(0)) ** 2).sum(0)
    # sanity of the feature space: two halves of real views are close; blurred views are far
    half = views.shape[0] // 2
    same = distribution_distances(model, views[:half], views[half : 2 * half])
    small = F.interpolate(views[half : 2 * half], scale_factor=0.5, mode="bilinear")
    blurred = F.interpolate(small, size=views.shape[-2:], mode="bilinear")
    blur = distribution_distances(model, views[:half], blurred)
    meta = {
        "world_id": world_id(cfg.world),
        "train_config": to_dict(cfg),
        "command": "distill encoder train " + " ".join(args),
        "train_seconds_last_run": round(time.perf_counter() - t0, 1),
        "val_r2_per_label": [round(float(x), 3) for x in r2],
        "val_r2_mean": round(float(r2.mean()), 3),
        "check_real_vs_real": same,
        "check_real_vs_blurred_2x": blur,
    }
    model.save_pretrained(out, meta)
    print(
        f"encoder saved to {out}: val R2 {meta['val_r2_mean']}, FID real/real "
        f"{same['fid']:.3f}, real/blurred {blur['fid']:.3f}"
    )
    return out
