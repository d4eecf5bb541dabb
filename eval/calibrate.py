"""`distill metrics calibrate`: apply controlled degradations to the true views of the test
objects and check that every metric of the quality axis responds to what it claims to measure,
in the right direction, monotonically, and from which level its paired 95% interval against the
clean views excludes zero at this object count. Then apply the same degradations at the same
levels to a reference model's outputs (teacher@50 on val objects by default: the operating
point), and derive each verdict metric's equivalence margin there (eval/margins.py)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from eval.degrade import degradations
from eval.margins import derive_margins, margins_md, run_time, write_margins
from eval.quality import PER_OBJECT, QualityAxis, Truth, copy_baseline
from eval.stats import excludes_zero
from samplers.protocol import tensors_key
from scenes.data import DATA_ROOT
from scenes.world import WorldConfig


@dataclass
class CalibrateConfig:
    out: str = "docs/metrics"  # calibration.json and calibration.md
    # the default root means the teacher's world's own folder (scenes.data.resolve_root: data/world2
    # for a world-2 teacher, data/world3 for a world-3 one), made if missing
    data_root: str = DATA_ROOT
    objects: int = 256  # test objects: the sweep's count
    recon: str = "shipped/recon"
    encoder: str = "shipped/encoder"
    batch: int = 32
    set_resamples: int = 1000  # subsets per FID/KID/unseen-distance interval (>= 1000 to report)
    noise: tuple[float, ...] = (0.02, 0.05, 0.1)  # pixel std in [0, 1] units
    blur: tuple[float, ...] = (0.5, 1.0, 1.5)  # Gaussian sigma in pixels
    colour: tuple[float, ...] = (0.02, 0.05, 0.1)  # RGB shift (+s, 0, -s) on object pixels
    # averaging, collapse, inconsistency: the share of objects with the failure
    failure_shares: tuple[float, ...] = (0.125, 0.25, 1.0)
    # the operating point the margins are derived at: MODEL@STEPS, MODEL "teacher" or a student
    # folder ("" skips the model-output calibration and writes no margins)
    reference: str = "teacher@50"
    reference_sampler: str = "euler"  # the teacher's sampler (students use their own)
    teacher: str = "shipped/teacher"
    guidance: float = 1.0  # the teacher's CFG scale, as in the sweep
    reference_split: str = "val"  # never the test split the sweep reports on
    reference_objects: int = 256


# what each metric claims to measure: degradation -> the direction it must move
# ("down": worse is lower, "up": worse is higher)
CLAIMS = {
    "seen_psnr": {"noise": "down", "blur": "down", "colour": "down"},
    "seen_psnr_view0": {"noise": "down", "blur": "down", "colour": "down"},
    "seen_ssim": {"noise": "down", "blur": "down"},
    "sharpness": {"noise": "up", "blur": "down"},
    "unseen_dist": {"averaging": "up", "collapse": "up"},
    "averaged_rate": {"averaging": "up"},
    "unseen_disagree_rate": {"inconsistency": "up"},  # view 1 from another object: its back
    "sharpness_log_error": {"noise": "up", "blur": "up"},
    "hf_correlation": {"noise": "down", "blur": "down"},
    "consistency_psnr": {"inconsistency": "down", "noise": "down"},
    "silhouette_iou": {"inconsistency": "down"},
    "chamfer": {"inconsistency": "up"},
    "fid": {"noise": "up", "blur": "up", "colour": "up", "collapse": "up"},
    "kid": {"noise": "up", "blur": "up", "colour": "up", "collapse": "up"},
}
KINDS = ("noise", "blur", "colour", "averaging", "collapse", "inconsistency")


def _detects(diff: float, half: float, direction: str) -> bool:
    return excludes_zero(diff, half) and (diff > 0) == (direction == "up")


def _cached(cache: Path | None, name: str, compute):
    """``compute()``, kept under ``cache/name.pt`` (written atomically) so that a killed
    calibration resumes from its last finished case; ``cache`` None: no cache."""
    if cache is None:
        return compute()
    path = cache / f"{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    from eval.cells import write_atomic

    value = compute()
    cache.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda p: torch.save(value, p))
    return value


def cache_dir(cfg: CalibrateConfig, pass_name: str, *keys: str) -> Path:
    """The resume folder of one pass: keyed by the whole config, the axis version and the
    weights of every model involved, so a changed setting or model never reuses a case."""
    from eval.cells import AXIS_VERSION

    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}  # where it writes: not a key
    blob = json.dumps([settings, AXIS_VERSION, pass_name, *keys], sort_keys=True, default=str)
    return (
        Path(cfg.out) / ".cache" / f"{pass_name}_{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
    )


def _resumed(cache: Path | None, names: list[str]) -> int:
    """How many of these cases an earlier (killed) run left in ``cache``: a resumed run's wall
    time covers only the rest, and its report says so."""
    return 0 if cache is None else sum((cache / f"{n}.pt").exists() for n in names)


def _run_cases(
    axis: QualityAxis, base: Tensor, cases, desc: str, cache: Path | None = None
) -> tuple[list[dict], dict, int]:
    """The clean row of ``base`` and one row per degradation: each metric, its paired difference
    to ``base`` and (from the second level on) to the previous level of the same kind;
    ``base``'s per-object figures; and how many cases came from ``cache`` (where each case's
    per-object figures are kept)."""
    names = ["clean"] + [f"{i:02d}_{kind}_{level}" for i, (kind, level, _) in enumerate(cases)]
    resumed = _resumed(cache, names)
    clean = _cached(cache, "clean", lambda: axis.evaluate(base))
    rows = [{"kind": "clean", "level": 0.0, **axis.summary(clean)}]
    prev = {}
    for i, (kind, level, views) in enumerate(tqdm(cases, desc=desc, unit="case")):
        m = _cached(cache, names[i + 1], lambda v=views: axis.evaluate(v))
        row = {"kind": kind, "level": level, **axis.summary(m), **axis.paired(m, clean)}
        if kind in prev:  # this level against the previous one: can the metric tell them apart?
            step = axis.paired(m, prev[kind])
            row.update({f"step_{k}": v for k, v in step.items()})
        prev[kind] = m
        rows.append(row)
    return rows, clean, resumed


def calibrate(cfg: CalibrateConfig) -> dict:
    from eval.encoder import FeatureEncoder
    from recon.io import load_reconstructor
    from scenes.model_views import models_world
    from teachers.io import load_teacher

    t0 = time.perf_counter()
    recon = load_reconstructor(cfg.recon).eval()
    # the world the models were trained on (the reference's teacher), not the reconstructor's
    ew = models_world({f"teacher {cfg.teacher}": load_teacher(cfg.teacher)})
    ds = ew.open(cfg.data_root, "test", cfg.objects)
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
    cases = list(degradations(cfg, truth.targets, truth, seeds, ds.world, axis.object_mask))
    keys = (recon.weights_key(), tensors_key(encoder.state_dict()), "test")
    cache = cache_dir(cfg, "truth", *keys)
    rows, clean, resumed = _run_cases(
        axis, truth.targets, cases, "degradations of the truth", cache
    )
    shown = axis.back_objects  # objects whose true views show a legible back
    reader_acc = float((clean["back_read"] == truth.back_class)[shown].double().mean())
    verdicts = _verdicts(rows)
    result = {
        "meta": {
            "config": asdict(cfg),
            "world": asdict(ds.world),
            "split": f"test objects 0..{cfg.objects - 1} of world version {ds.world.version}",
            "objects": cfg.objects,
            "seconds": time.perf_counter() - t0,
            "cases": len(cases) + 1,
            "resumed_cases": resumed,  # read back from an earlier run's cache: not in `seconds`
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "reader_accuracy": reader_acc,
            "reader_unreadable": float((clean["back_read"] < 0)[shown].double().mean()),
            "back_views": axis.back_shown.double().mean(0).tolist(),
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
    if cfg.reference:
        doc = calibrate_reference(cfg, recon, encoder, ds.world)
        write_margins(out, doc)
        print(margins_md(doc))
    return result


def parse_reference(ref: str) -> tuple[str, int]:
    """``MODEL@STEPS`` -> (model, steps): "teacher" or a student folder, and a step count."""
    name, _, steps = ref.rpartition("@")
    if not name or not steps.isdigit() or int(steps) < 1:
        raise ValueError(
            f"reference must be MODEL@STEPS (MODEL: teacher or a student folder; STEPS >= 1),"
            f" e.g. teacher@50; got {ref!r}"
        )
    return name, int(steps)


def reference_outputs(cfg: CalibrateConfig, recon, b: dict) -> tuple[str, Tensor]:
    """The reference cell's label and its outputs [B, V, 3, H, W] for the batch ``b`` (the
    views the reconstructor takes), with the batch's per-object noise seeds as in the sweep."""
    from scenes.model_views import check_views_fit, recon_world
    from students.folder import LoadedStudent
    from students.sampling import sample_views
    from teachers.io import load_teacher

    name, steps = parse_reference(cfg.reference)
    teacher = load_teacher(cfg.teacher)
    model = (
        teacher
        if name == "teacher"
        else LoadedStudent.from_pretrained(name, teacher=teacher, merge=True)
    )
    if teacher.info.image_size != recon.rig.image_size:
        raise ValueError(
            f"reference {cfg.reference}: teacher {cfg.teacher} works at"
            f" {teacher.info.image_size}px, reconstructor {cfg.recon} at"
            f" {recon.rig.image_size}px"
        )
    label = f"{Path(name).name}@{steps}"
    pick = check_views_fit(model, recon_world(recon), label)
    seeds = [int(s) for s in b["seeds"]]
    with torch.inference_mode():
        views, _ = sample_views(
            model, b["cond"], steps, seeds, cfg.reference_sampler, cfg.guidance, cfg.batch
        )
    sampler = model.own_sampler or cfg.reference_sampler
    return f"{label} ({sampler})", (views if pick is None else views[:, pick])


def calibrate_reference(cfg: CalibrateConfig, recon, encoder, world: WorldConfig) -> dict:
    """The degradations applied to the reference cell's outputs on ``reference_split`` objects,
    and the margins derived from them (eval/margins.py)."""
    from scenes.data import open_world_split

    t0 = time.perf_counter()
    n = cfg.reference_objects
    # the test split's world (the models'): data of another world is refused
    ds = open_world_split(cfg.data_root, cfg.reference_split, n, world, "its test split")
    b = ds.batch(list(range(n)))
    truth = Truth.from_batch(b, ds.rig, ds.world.version)
    from teachers.io import load_teacher

    keys = (
        recon.weights_key(),
        tensors_key(encoder.state_dict()),
        load_teacher(cfg.teacher).weights_key(),
    )
    cache = cache_dir(cfg, "reference", *keys)
    label, base = _cached(cache, "outputs", lambda: reference_outputs(cfg, recon, b))
    axis = QualityAxis(truth, recon, encoder, batch=cfg.batch, set_resamples=cfg.set_resamples)
    seeds = [int(s) for s in b["seeds"]]
    cases = list(degradations(cfg, base, truth, seeds, ds.world, axis.object_mask))
    rows, _, resumed = _run_cases(axis, base, cases, f"degradations of {label}", cache)
    levels = {k: getattr(cfg, k) for k in ("noise", "blur", "colour", "failure_shares")}
    return {
        "meta": {
            "reference": label,
            "split": f"{cfg.reference_split} objects 0..{n - 1} of world version"
            f" {ds.world.version}",
            "world": asdict(ds.world),  # a sweep on another world does not take these margins
            "objects": n,
            "levels": levels,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": time.perf_counter() - t0,
            "cases": len(cases) + 1,
            "resumed_cases": resumed,
        },
        "operating_point": {k: v for k, v in rows[0].items() if isinstance(v, float)},
        "margins": derive_margins(rows, CLAIMS),
        "rows": rows,
    }


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
        f" sweep's count), {meta['created']}, {run_time(meta)}. Each degradation is"
        " applied to the true target views; `diff` is the paired difference to the clean views"
        " on the same objects with its 95% bootstrap half-width. A level is *detected* when that"
        " interval excludes zero in the direction the metric claims.",
        "",
        f"- back reader on the clean true views (every view that shows the back):"
        f" {meta['reader_accuracy']:.1%} correct, {meta['reader_unreadable']:.1%} unreadable;"
        " share of objects whose view shows the back, per view: "
        + ", ".join(f"{s:.1%}" for s in meta.get("back_views", [])),
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
        " RGB shift (+s, 0, -s) on object pixels; averaging, collapse and inconsistency = the"
        " share of objects (the last ones) with the failure: averaging = the target views"
        " averaged with the same object painted with a back of another colour (fronts"
        " unchanged); collapse = painted with object 0's back class; inconsistency = view 1"
        " taken from another object.",
        "",
    ]
    return "\n".join(lines)
