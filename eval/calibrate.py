"""`distill metrics calibrate`: apply controlled degradations to the true views of the test
objects and check that every metric of the quality axis responds to what it claims to measure,
in the right direction, monotonically, and from which level its paired 95% interval against the
clean views excludes zero at this object count."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from eval.quality import PER_OBJECT, QualityAxis, Truth, copy_baseline
from eval.stats import excludes_zero
from scenes.objects import make_object
from scenes.rig import make_rig, render_views
from scenes.world import BACK_PATTERNS, WorldConfig, back_classes


@dataclass
class CalibrateConfig:
    out: str = "docs/metrics"  # calibration.json and calibration.md
    data_root: str = "data/world2"  # a world version 2 dataset (made if missing)
    objects: int = 256  # test objects: the sweep's count
    recon: str = "shipped/recon"
    encoder: str = "shipped/encoder"
    batch: int = 32
    set_resamples: int = 1000  # subsets per FID/KID/unseen-distance interval (>= 1000 to report)
    noise: tuple[float, ...] = (0.02, 0.05, 0.1)  # pixel std in [0, 1] units
    blur: tuple[float, ...] = (0.5, 1.0, 1.5)  # Gaussian sigma in pixels
    colour: tuple[float, ...] = (0.02, 0.05, 0.1)  # RGB shift (+s, 0, -s) on object pixels


# what each metric claims to measure: degradation -> the direction it must move
# ("down": worse is lower, "up": worse is higher)
CLAIMS = {
    "seen_psnr": {"noise": "down", "blur": "down", "colour": "down"},
    "seen_psnr_view0": {"noise": "down", "blur": "down", "colour": "down"},
    "seen_ssim": {"noise": "down", "blur": "down"},
    "sharpness": {"noise": "up", "blur": "down"},
    "unseen_dist": {"averaging": "up", "collapse": "up"},
    "averaged_rate": {"averaging": "up"},
    "consistency_psnr": {"inconsistency": "down"},
    "silhouette_iou": {"inconsistency": "down"},
    "chamfer": {"inconsistency": "up"},
    "fid": {"noise": "up", "blur": "up", "colour": "up", "collapse": "up"},
    "kid": {"noise": "up", "blur": "up", "colour": "up", "collapse": "up"},
}
KINDS = ("noise", "blur", "colour", "averaging", "collapse", "inconsistency")


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    flat = x.reshape(-1, 1, *x.shape[-2:])
    pad = torch.nn.functional.pad(flat, (r, r, r, r), mode="replicate")
    out = torch.nn.functional.conv2d(pad, k.reshape(1, 1, 1, -1))
    out = torch.nn.functional.conv2d(out, k.reshape(1, 1, -1, 1))
    return out.reshape(x.shape)


def add_noise(x: Tensor, std: float, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + 2 * std * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def colour_shift(x: Tensor, s: float, mask: Tensor) -> Tensor:
    shift = torch.tensor([2 * s, 0.0, -2 * s]).reshape(3, 1, 1)
    return torch.where(mask[..., None, :, :], (x + shift).clamp(-1, 1), x)


def other_back(cls: int) -> int:
    """A back class of another colour (same pattern): a plausible alternative unseen side."""
    return (cls + len(BACK_PATTERNS)) % len(back_classes())


def render_with_backs(seeds: list[int], backs: list[int], world: WorldConfig) -> Tensor:
    """Target views [B, V, 3, H, W] of the same objects painted with the given back classes."""
    rig = make_rig(world)
    out = []
    for s, b in zip(seeds, backs):
        g = make_object(s, world, back=b)
        out.append(render_views(g, rig.target_viewmats, rig.K, rig.size))
    return torch.stack(out)


def degradations(cfg: CalibrateConfig, truth: Truth, seeds: list[int], world, obj_mask):
    """(kind, level, views) for every controlled degradation of the true target views."""
    gt = truth.targets
    for s in cfg.noise:
        yield "noise", s, add_noise(gt, s)
    for s in cfg.blur:
        yield "blur", s, gaussian_blur(gt, s)
    for s in cfg.colour:
        yield "colour", s, colour_shift(gt, s, obj_mask)
    backs = truth.back_class.tolist()
    alt = render_with_backs(seeds, [other_back(b) for b in backs], world)
    yield "averaging", 1.0, (gt + alt) / 2  # the mean of two plausible backs, same fronts
    yield "collapse", 1.0, render_with_backs(seeds, [backs[0]] * len(seeds), world)
    inc = gt.clone()
    inc[:, 1] = gt.roll(1, dims=0)[:, 1]  # view 1 from another object
    yield "inconsistency", 1.0, inc


def _detects(diff: float, half: float, direction: str) -> bool:
    return excludes_zero(diff, half) and (diff > 0) == (direction == "up")


def calibrate(cfg: CalibrateConfig) -> dict:
    from eval.encoder import FeatureEncoder
    from recon.io import load_reconstructor
    from scenes.data import open_eval_split

    t0 = time.perf_counter()
    recon = load_reconstructor(cfg.recon).eval()
    world = WorldConfig(image_size=recon.rig.image_size)
    ds = open_eval_split(cfg.data_root, "test", cfg.objects, world.image_size, world)
    if ds.world.version < 2:
        raise ValueError(
            f"{cfg.data_root}: world version {ds.world.version}; the calibration needs a world "
            "version 2 dataset (discrete back classes): point data_root at a new folder"
        )
    b = ds.batch(list(range(cfg.objects)))
    seeds = [int(s) for s in b["seeds"]]
    truth = Truth.from_batch(b, ds.rig, ds.world.version)
    encoder = FeatureEncoder.from_pretrained(cfg.encoder)
    axis = QualityAxis(truth, recon, encoder, batch=cfg.batch, set_resamples=cfg.set_resamples)
    clean = axis.evaluate(truth.targets)
    rows = [{"kind": "clean", "level": 0.0, **axis.summary(clean)}]
    cases = list(degradations(cfg, truth, seeds, ds.world, axis.object_mask))
    prev = {}
    for kind, level, views in tqdm(cases, desc="degradations", unit="case"):
        m = axis.evaluate(views)
        row = {"kind": kind, "level": level, **axis.summary(m), **axis.paired(m, clean)}
        if kind in prev:  # this level against the previous one: can the metric tell them apart?
            step = axis.paired(m, prev[kind])
            row.update({f"step_{k}": v for k, v in step.items()})
        prev[kind] = m
        rows.append(row)
    reader_acc = float((clean["back_read"] == truth.back_class).double().mean())
    verdicts = _verdicts(rows)
    result = {
        "meta": {
            "config": asdict(cfg),
            "world": asdict(ds.world),
            "split": f"test objects 0..{cfg.objects - 1} of world version {ds.world.version}",
            "objects": cfg.objects,
            "seconds": time.perf_counter() - t0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "reader_accuracy": reader_acc,
            "reader_unreadable": float((clean["back_read"] < 0).double().mean()),
            "copy_psnr_view0": float(torch.nanmean(copy_baseline(truth, axis.seen_mask))),
            "seen_pixel_share": axis.seen_mask.double().mean((0, 2, 3)).tolist(),
        },
        "rows": rows,
        "verdicts": verdicts,
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=2))
    (out / "calibration.md").write_text(calibration_md(result))
    print(calibration_md(result))
    return result


def _verdicts(rows: list[dict]) -> dict:
    """Per metric and claimed degradation: direction, monotone, smallest level detected."""
    out = {}
    for metric, claims in CLAIMS.items():
        if f"{metric}_diff" not in rows[-1]:
            continue
        v = {}
        for kind, direction in claims.items():
            rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["level"])
            diffs = [r[f"{metric}_diff"] for r in rs]
            halves = [r[f"{metric}_diff_ci95"] for r in rs]
            sign = 1 if direction == "up" else -1
            right_way = all(sign * d > 0 for d in diffs)
            monotone = all(sign * (b - a) >= 0 for a, b in zip(diffs, diffs[1:]))
            detected = [
                r["level"] for r, d, h in zip(rs, diffs, halves) if _detects(d, h, direction)
            ]
            steps = [
                _detects(r[f"step_{metric}_diff"], r[f"step_{metric}_diff_ci95"], direction)
                for r in rs[1:]
            ]
            v[kind] = {
                "direction": direction,
                "right_way": right_way,
                "monotone": monotone,
                "smallest_detected": min(detected) if detected else None,
                "detects_all_levels": len(detected) == len(rs),
                # each level told apart from the previous one (paired interval, same objects)
                "resolves_levels": all(steps) if steps else None,
            }
        out[metric] = {
            "claims": v,
            "passes": all(
                c["right_way"] and c["smallest_detected"] is not None for c in v.values()
            ),
        }
    return out


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:.4g}"


def calibration_md(result: dict) -> str:
    meta, rows, ver = result["meta"], result["rows"], result["verdicts"]
    metrics = [m for m in list(PER_OBJECT) + ["unseen_dist", "fid", "kid"] if m in rows[0]]
    lines = [
        "# Calibration of the quality axis",
        "",
        f"Made by `distill metrics calibrate` on {meta['split']} ({meta['objects']} objects, the"
        f" sweep's count), {meta['created']}, {meta['seconds'] / 60:.1f} min. Each degradation is"
        " applied to the true target views; `diff` is the paired difference to the clean views"
        " on the same objects with its 95% bootstrap half-width. A level is *detected* when that"
        " interval excludes zero in the direction the metric claims.",
        "",
        f"- back reader on the clean true back views: {meta['reader_accuracy']:.1%} correct,"
        f" {meta['reader_unreadable']:.1%} unreadable",
        "- copy-the-condition baseline, seen-side PSNR of view 0:"
        f" {meta['copy_psnr_view0']:.2f} dB",
        "- share of target pixels seen by the condition camera, per view: "
        + ", ".join(f"{s:.1%}" for s in meta["seen_pixel_share"]),
        "",
        "## Verdicts",
        "",
        "| metric | passes | claimed degradation: direction, right way, monotone, smallest level"
        " detected, each level told from the previous |",
        "|---|---|---|",
    ]
    for m, v in ver.items():
        parts = [
            f"{k} ({c['direction']}): {'yes' if c['right_way'] else 'NO'},"
            f" {'yes' if c['monotone'] else 'no'}, {_fmt(c['smallest_detected'])}"
            + (
                ""
                if c["resolves_levels"] is None
                else f", {'yes' if c['resolves_levels'] else 'no'}"
            )
            for k, c in v["claims"].items()
        ]
        lines.append(f"| {m} | {'yes' if v['passes'] else '**no**'} | {'; '.join(parts)} |")
    lines += [
        "",
        "A metric that does not pass is not used for any verdict in the sweep's report.",
        "",
        "## Values",
        "",
        "| degradation | level | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for r in rows:
        cells = []
        for m in metrics:
            v = _fmt(r.get(m))
            if f"{m}_diff" in r:
                v += f" ({r[m + '_diff']:+.3g} ± {r[m + '_diff_ci95']:.2g})"
            cells.append(v)
        lines.append(f"| {r['kind']} | {_fmt(r['level'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Levels: noise = pixel std in [0, 1] units; blur = Gaussian sigma in pixels; colour ="
        " RGB shift (+s, 0, -s) on object pixels; averaging = each object's target views"
        " averaged with the same object painted with a back of another colour (fronts unchanged);"
        " collapse = every object painted with object 0's back class; inconsistency = view 1"
        " taken from another object.",
        "",
    ]
    return "\n".join(lines)
