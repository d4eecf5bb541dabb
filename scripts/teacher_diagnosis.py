"""Teacher diagnosis on the val split: train a few recipe variants from scratch at equal compute
(same network, same updates and batch), then for each kept checkpoint measure

- the teacher's x0 estimate from x_t of the true views, seen-side PSNR of view 0, per noise level
  (does the condition reach the output at high noise?), and
- its 50-step Euler samples on the quality axis (seen side, sharpness, unseen side, FID),

against training compute. Writes <out>/diagnosis.json, .md and learning_curve.png; a killed run
resumes (finished variants are kept, training resumes from its checkpoints).

    python scripts/teacher_diagnosis.py --steps 1500 --every 500

With ``--equal-time`` the variants get equal wall time instead of equal updates: a short probe
run times one update of each, and every variant after the first gets the first's budget in
seconds (its updates and checkpoint period scaled by the ratio). The shipped recipe against the
teacher v3 (reference attention + camera rays) on world version 3:

    python scripts/teacher_diagnosis.py --variants shipped_objective,v3 --equal-time \
        --world-version 3 --data-root data/world3 --steps 3000 --every 1000 \
        --run-root runs/teacher_diag_w3 --out docs/teacher/diagnosis_v3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    # name: (what it changes, config overrides)
    "shipped_objective": (
        "stage 1's objective: logit-normal t",
        ["objective.t_sampling=logit_normal"],
    ),
    "uniform_t": ("uniform t: 2.5x more updates at t > 0.8", ["objective.t_sampling=uniform"]),
    "shift3_t": (
        "logit-normal t shifted towards noise (SD3 shift 3)",
        ["objective.t_sampling=logit_normal", "objective.t_shift=3.0"],
    ),
    "x0_pred": (
        "x0 prediction, loss on x0 (no noise to pass through at high t)",
        ["teacher.prediction=x0"],
    ),
    "x0_pred_vloss": (
        "x0 prediction, loss on the velocity it implies (|x0 error|^2 / max(t, 0.05)^2)",
        ["teacher.prediction=x0", "objective.loss_space=velocity"],
    ),
}
# the stage 1 objective on the teacher v3: reference attention at every level + Pluecker rays
VARIANTS["v3"] = ("teacher v3 (reference attention, camera rays), stage 1's objective", [])
VARIANTS["v3_ref_t0"] = (
    "teacher v3 with its reference pass at t = 0 (the clean condition read as clean)",
    ["teacher.reference_time=zero"],
)
VARIANTS["v3_concat"] = (
    "teacher v3 with the condition also concatenated on channels (a pixel-aligned path)",
    ["teacher.concat_condition=true"],
)
CONFIGS = {n: "configs/teacher/v3.yaml" for n in ("v3", "v3_ref_t0", "v3_concat")}
DEFAULT_CONFIG = "configs/teacher/default.yaml"
PROBE_STEPS = 30  # updates timed per variant for --equal-time (the first 10 are warm-up)
NOISE_LEVELS = (0.2, 0.6, 1.0)
SAMPLE_STEPS = 50  # Euler steps of the samples measured (--sample-steps, for smoke runs)


def train_variant(
    name: str, overrides: list[str], a, run: Path, steps: int, every: int, log_every: int = 50
) -> float:
    cmd = [
        sys.executable,
        "-m",
        "distill.cli",
        "teacher",
        "train",
        CONFIGS.get(name, DEFAULT_CONFIG),
        f"run_dir={run}",
        f"out={run / 'teacher'}",
        f"world.version={a.world_version}",
        f"data.root={a.data_root}",
        f"data.train_count={a.train_count}",
        f"train.steps={steps}",
        f"train.ckpt_every={every}",
        "train.keep_ckpts=20",
        f"train.log_every={log_every}",
        *overrides,
        *a.set,
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def seconds_per_update(name: str, overrides: list[str], a) -> float:
    """One update's wall seconds of variant ``name``: a PROBE_STEPS-update run, timed between
    its 10th and last update (losses.csv), kept under <run-root>/probe_<name>."""
    run = Path(a.run_root) / f"probe_{name}"
    if not (run / "teacher" / "teacher.json").exists():
        train_variant(name, overrides, a, run, PROBE_STEPS, PROBE_STEPS, log_every=10)
    elapsed = _elapsed_minutes(run)
    return 60 * (elapsed[PROBE_STEPS] - elapsed[10]) / (PROBE_STEPS - 10)


def budgets(names: list[str], a) -> dict[str, tuple[int, int, float]]:
    """(updates, checkpoint period, probed seconds per update) per variant: --steps and --every
    for all, or with --equal-time the first variant's wall time for each."""
    if not a.equal_time:
        return {n: (a.steps, a.every, 0.0) for n in names}
    sec = {n: seconds_per_update(n, VARIANTS[n][1], a) for n in names}
    first = sec[names[0]]
    out = {}
    for n in names:
        r = first / sec[n]
        out[n] = (max(1, round(a.steps * r)), max(1, round(a.every * r)), sec[n])
        print(f"{n}: {sec[n]:.3f} s/update -> {out[n][0]} updates, every {out[n][1]}", flush=True)
    return out


def load_checkpoint(run: Path, step: int):
    import yaml

    from teachers.lab import LabTeacher, LabTeacherConfig

    cfg = yaml.safe_load((run / "config.yaml").read_text())["teacher"]
    model = LabTeacher(LabTeacherConfig(**cfg))
    folder = run / "checkpoints" / f"step_{step:07d}"
    sd = load_file(folder / "ema.safetensors")
    model.load_state_dict(sd)
    return model.eval()


OTHER_COND = "x0_seen_psnr_view0_t1.0_other_cond"


@torch.no_grad()
def _x0_psnr(model, truth, axis, eps, t: float, cond) -> float:
    """Seen-side view-0 PSNR of the x0 estimate from x_t of the true views at time ``t``."""
    from eval.seen import masked_psnr
    from samplers.paths import convert, get_path, interpolate

    path = get_path(model.path_name)
    tt = torch.full((len(truth),), t)
    x_t = interpolate(path, truth.targets, eps, tt)
    pred = torch.cat(
        [model(x_t[i : i + 32], tt[i : i + 32], cond[i : i + 32]) for i in range(0, len(truth), 32)]
    )
    x0 = convert(path, pred, x_t, tt, model.prediction, "x0").clamp(-1, 1)
    return float(torch.nanmean(masked_psnr(x0[:, 0], truth.targets[:, 0], axis.seen_mask[:, 0])))


def _eps(truth):
    return torch.randn(truth.targets.shape, generator=torch.Generator().manual_seed(0))


def _other_cond(truth):
    """Each object given another object's condition (the conditions rolled by one)."""
    return truth.cond[torch.roll(torch.arange(len(truth)), 1)]


def x0_curve(model, truth, axis, seeds) -> dict[str, float]:
    """Seen-side view-0 PSNR of the x0 estimate from x_t of the true views, per noise level (does
    the condition reach the output at high noise?), and at t = 1 from another object's condition
    (the same objects' conditions rolled by one: how much of the first is the condition's)."""
    eps = _eps(truth)
    out = {
        f"x0_seen_psnr_view0_t{t}": _x0_psnr(model, truth, axis, eps, t, truth.cond)
        for t in NOISE_LEVELS
    }
    out[OTHER_COND] = _x0_psnr(model, truth, axis, eps, 1.0, _other_cond(truth))
    return out


def backfill_other_cond(res: dict, a, truth, axis) -> bool:
    """Points measured before the other-condition figure existed get it from their checkpoint
    (the same noise and objects as the rest of their row); True when any did."""
    eps, other, filled = _eps(truth), _other_cond(truth), False
    for key, v in res["variants"].items():
        run = Path(a.run_root) / f"{key.split('@')[0]}_{v['steps']}"
        for p in v["points"]:
            if OTHER_COND in p or not (run / "checkpoints" / f"step_{p['step']:07d}").exists():
                continue
            model = load_checkpoint(run, p["step"])
            p[OTHER_COND] = _x0_psnr(model, truth, axis, eps, 1.0, other)
            filled = True
    return filled


def _elapsed_minutes(run: Path) -> dict[int, float]:
    """Training minutes at each logged update of a run (losses.csv; a resumed run's clock
    restarts, so a killed stage undercounts its lost minutes)."""
    rows = (run / "losses.csv").read_text().splitlines()[1:]
    return {int(r.split(",")[0]): float(r.split(",")[2]) / 60 for r in rows if r}


def recipe_curve(runs: list[Path], every: int, truth, seeds, axis) -> list[dict]:
    """Points along a staged recipe (stage 2 initialised from stage 1's end): every ``every``-th
    kept checkpoint of each stage and its last, with updates and minutes summed over stages."""
    points, steps0, minutes0 = [], 0, 0.0
    for i, run in enumerate(runs):
        kept = sorted(int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*"))
        if not kept:
            raise SystemExit(f"{run}: no checkpoints (train.keep_ckpts too small?)")
        elapsed = _elapsed_minutes(run)
        for step in kept:
            if step % every and step != kept[-1]:
                continue
            p = {
                "step": steps0 + step,
                "stage": i + 1,
                "train_minutes": minutes0 + elapsed[max(k for k in elapsed if k <= step)],
            }
            p.update(evaluate(load_checkpoint(run, step), truth, seeds, axis))
            points.append(p)
            print(run.name, json.dumps(p), flush=True)
        steps0 += kept[-1]
        minutes0 += elapsed[max(elapsed)]
    return points


def evaluate(model, truth, seeds, axis) -> dict:
    from students.sampling import sample_views

    row = x0_curve(model, truth, axis, seeds)
    views, _ = sample_views(model, truth.cond, SAMPLE_STEPS, seeds, "euler", 1.0, batch=32)
    s = axis.summary(axis.evaluate(views))
    keys = ("seen_psnr_view0", "seen_psnr", "sharpness", "unseen_dist", "averaged_rate", "fid")
    for k in keys:
        row[k], row[k + "_ci95"] = s.get(k), s.get(k + "_ci95")
    return row


def _teacher_minutes(folder: Path) -> float | None:
    """Training minutes of a teacher: its recorded last stage plus the stages it was initialised
    from, as far as their folders are here; None when a stage's record is missing."""
    total = 0.0
    while True:
        meta = folder / "teacher.json"
        if not meta.exists():
            return None
        info = json.loads(meta.read_text())
        total += info.get("train_seconds_last_run", 0.0) / 60
        if not info.get("init"):
            return total
        init = Path(info["init"])
        folder = init if (init / "teacher.json").exists() else init / "teacher"


def _minutes(m: float | None) -> str:
    return "n/a (stage 1's record is not here)" if m is None else f"{m:.1f}"


def write_report(out: Path, res: dict, copy: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("seen_psnr_view0", "50-step seen-side PSNR, view 0 (dB)"),
        ("x0_seen_psnr_view0_t1.0", "x0 estimate at t = 1, seen view 0 (dB)"),
        ("sharpness", "50-step sharpness (1 = truth)"),
        ("unseen_dist", "50-step unseen-side distance"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (k, title) in zip(axes, panels):
        for name, v in res["variants"].items():
            pts = v["points"]
            ax.plot([p["train_minutes"] for p in pts], [p[k] for p in pts], "-o", label=name)
        ref = res.get("reference")
        if ref and ref.get("train_minutes"):
            ax.plot([ref["train_minutes"]], [ref[k]], "k*", ms=10, label="reference teacher")
        if k.startswith("seen") or k.startswith("x0"):
            ax.axhline(copy, color="grey", ls="--", lw=0.8, label="copy the condition")
        ax.set_xlabel("training compute, minutes on this machine")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"teacher recipe variants, val objects 0..{res['objects'] - 1}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=110)
    plt.close(fig)
    lines = [
        "# Teacher diagnosis (val split)",
        "",
        f"`scripts/teacher_diagnosis.py`, {res['objects']} val objects of world version"
        f" {res.get('world_version', 2)}, each variant's architecture trained from scratch on"
        f" {res['train_count']} objects, batch 16 unless set otherwise"
        f" ({' '.join(res.get('set', [])) or 'nothing set'}), EMA weights at each checkpoint;"
        f" {'equal wall time' if res.get('equal_time') else 'equal updates'} per variant."
        " Copying the condition into view 0 scores"
        f" {copy:.2f} dB on the seen pixels.{_recipe_note(res)}",
        "",
        "![curve](learning_curve.png)",
        "",
        "| variant | updates | minutes | x0 t=0.2 | x0 t=0.6 | x0 t=1.0 | x0 t=1.0, other's"
        f" condition | {res.get('sample_steps', 50)}-step seen view 0 |"
        " seen pooled | sharpness | unseen dist | FID |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in res["variants"].items():
        for p in v["points"]:
            lines.append(
                f"| {name} | {p['step']} | {p['train_minutes']:.1f} | "
                f"{p['x0_seen_psnr_view0_t0.2']:.2f} | {p['x0_seen_psnr_view0_t0.6']:.2f} | "
                f"{p['x0_seen_psnr_view0_t1.0']:.2f} | {_num(p.get(OTHER_COND))} |"
                f" {p['seen_psnr_view0']:.2f} ±"
                f" {p['seen_psnr_view0_ci95']:.2f} | {p['seen_psnr']:.2f} | {p['sharpness']:.2f} |"
                f" {p['unseen_dist']:.3f} | {p['fid']:.2f} |"
            )
    ref = res.get("reference")
    if ref:
        lines.append(
            f"| reference teacher ({ref['teacher']}, its own world, both stages) | - |"
            f" {_minutes(ref['train_minutes'])} | {ref['x0_seen_psnr_view0_t0.2']:.2f} |"
            f" {ref['x0_seen_psnr_view0_t0.6']:.2f} | {ref['x0_seen_psnr_view0_t1.0']:.2f} |"
            f" {_num(ref.get(OTHER_COND))} |"
            f" {ref['seen_psnr_view0']:.2f} ± {ref['seen_psnr_view0_ci95']:.2f} |"
            f" {ref['seen_psnr']:.2f} | {ref['sharpness']:.2f} | {ref['unseen_dist']:.3f} |"
            f" {ref['fid']:.2f} |"
        )
    lines += ["", *[f"- {n}: {v['what']}{_probe(v)}" for n, v in res["variants"].items()], ""]
    lines += [
        "Minutes are wall time on the machine each variant ran on; machines differ between"
        " sessions, so equal time is set per run from the probes (one machine), and the probed"
        " seconds per update say how fast that machine was.",
        "",
    ]
    (out / "diagnosis.md").write_text("\n".join(lines))


def _recipe_note(res: dict) -> str:
    """What the header's "from scratch" and "equal updates" mean for staged recipes (--recipe)."""
    staged = [n for n, v in res["variants"].items() if any("stage" in p for p in v["points"])]
    if not staged:
        return ""
    return (
        f" Staged recipes ({', '.join(staged)}) are measured as trained: their own updates, each"
        " later stage from the earlier stage's weights, updates and minutes summed over stages."
    )


def _probe(v: dict) -> str:
    s = v.get("probe_s_per_update")
    return f" (probe: {s:.3f} s per update)" if s else ""


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--train-count", type=int, default=2000)
    ap.add_argument("--eval-count", type=int, default=64)
    ap.add_argument("--data-root", default="data/world3")
    ap.add_argument("--world-version", type=int, default=3, help="train and val world")
    ap.add_argument(
        "--set", action="append", default=[], help="key=value for every training run (smoke)"
    )
    ap.add_argument("--sample-steps", type=int, default=SAMPLE_STEPS, help="Euler steps")
    ap.add_argument(
        "--equal-time",
        action="store_true",
        help="equal wall time per variant (the first's at --steps) instead of equal updates",
    )
    ap.add_argument("--run-root", default="runs/teacher_diag", help="one run folder per budget")
    ap.add_argument("--encoder", default="shipped/encoder")
    ap.add_argument("--out", default="docs/teacher/diagnosis")
    ap.add_argument(
        "--reference", default="shipped/teacher", help="a finished teacher measured alongside"
    )
    ap.add_argument(
        "--recipe",
        default="",
        help="instead of training variants: measure the checkpoints of a staged recipe's runs "
        "(comma-separated run folders, stage 1 first), every --every updates",
    )
    ap.add_argument("--recipe-name", default="recipe", help="its name in the report")
    return ap.parse_args()


def _load_results(res_path: Path, a, copy: float) -> dict:
    """diagnosis.json so far (a killed run resumes), with this run's settings."""
    res = json.loads(res_path.read_text()) if res_path.exists() else {"variants": {}}
    res["variants"] = {  # entries written before budgets were part of the key
        (k if "@" in k else f"{k}@{v['steps']}"): v for k, v in res["variants"].items()
    }
    now = {
        "objects": a.eval_count,
        "train_count": a.train_count,
        "world_version": a.world_version,
        "equal_time": a.equal_time,
        "set": a.set,
        "sample_steps": a.sample_steps,
    }
    if res["variants"]:  # measured figures of other settings must not share a table
        changed = {k: (res[k], v) for k, v in now.items() if k in res and res[k] != v}
        if changed:
            raise SystemExit(
                f"{res_path} holds variants measured with other settings "
                + ", ".join(f"{k} {old} (now {v})" for k, (old, v) in changed.items())
                + ": give another --out, or run with its settings"
            )
    if res.get("reference", {}).get("objects") != a.eval_count:
        res.pop("reference", None)  # measured on other objects (or before it said how many)
    res.update(now, copy_psnr_view0=copy)
    return res


def _reference(folder: str, truth, seeds, axis) -> dict:
    """The finished teacher in ``folder`` measured like the variants' checkpoints."""
    from teachers.io import load_teacher

    ref = load_teacher(folder)
    minutes = _teacher_minutes(Path(folder))
    row = {"teacher": folder, "train_minutes": minutes, "objects": len(truth)}
    row.update(evaluate(ref, truth, seeds, axis))
    return row


def _recipe_entry(a, truth, seeds, axis) -> tuple[str, dict]:
    """The report entry of a staged recipe's runs (--recipe) and its key."""
    runs = [Path(r) for r in a.recipe.split(",")]
    points = recipe_curve(runs, a.every, truth, seeds, axis)
    return f"{a.recipe_name}@{points[-1]['step']}", {
        "what": f"staged recipe: {', '.join(str(r) for r in runs)}",
        "overrides": [],
        "steps": points[-1]["step"],
        "wall_s": 60 * points[-1]["train_minutes"],
        "points": points,
    }


def _variant_entry(
    name: str, what: str, overrides: list[str], a, budget: tuple, truth, seeds, axis
) -> dict:
    """Train variant ``name`` for its budget's updates and measure every checkpoint it keeps."""
    steps, every, probe_s = budget
    run = Path(a.run_root) / f"{name}_{steps}"
    wall = train_variant(name, overrides, a, run, steps, every)
    info = json.loads((run / "teacher" / "teacher.json").read_text())
    per_step = info["train_seconds_last_run"] / steps
    points = []
    for step in range(every, steps + 1, every):
        p = {"step": step, "train_minutes": step * per_step / 60}
        p.update(evaluate(load_checkpoint(run, step), truth, seeds, axis))
        points.append(p)
        print(name, json.dumps(p), flush=True)
    return {
        "what": what,
        "overrides": overrides,
        "steps": steps,
        "probe_s_per_update": probe_s,
        "wall_s": wall,
        "points": points,
    }


def main() -> None:
    global SAMPLE_STEPS
    a = _parse_args()
    SAMPLE_STEPS = a.sample_steps
    from eval.encoder import FeatureEncoder
    from eval.quality import QualityAxis, copy_baseline
    from eval.views import eval_objects
    from scenes.world import WorldConfig

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    world = WorldConfig(version=a.world_version)
    truth, seeds = eval_objects(a.data_root, "val", a.eval_count, world.image_size, world)
    axis = QualityAxis(truth, None, FeatureEncoder.from_pretrained(a.encoder))
    copy = float(torch.nanmean(copy_baseline(truth, axis.seen_mask)))
    res_path = out / "diagnosis.json"
    res = _load_results(res_path, a, copy)
    if backfill_other_cond(res, a, truth, axis):  # kept even when nothing else runs
        res_path.write_text(json.dumps(res, indent=2))
        write_report(out, res, copy)
    if a.reference and "reference" not in res:
        res["reference"] = _reference(a.reference, truth, seeds, axis)
        res_path.write_text(json.dumps(res, indent=2))
    if a.recipe:
        key, entry = _recipe_entry(a, truth, seeds, axis)
        res["variants"][key] = entry
        res_path.write_text(json.dumps(res, indent=2))
        write_report(out, res, copy)
        return
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    budget = budgets(names, a)
    for name in names:
        what, overrides = VARIANTS[name]
        key = f"{name}@{a.steps}" + ("=time" if a.equal_time else "")  # variant and budget
        if key in res["variants"]:
            continue
        res["variants"][key] = _variant_entry(
            name, what, overrides, a, budget[name], truth, seeds, axis
        )
        res_path.write_text(json.dumps(res, indent=2))
        write_report(out, res, copy)


if __name__ == "__main__":
    main()
