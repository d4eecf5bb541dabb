"""Quality against distillation compute: every method's recipe (configs/methods/<m>.yaml) trained
at fractions of its equal budget (0.5x, 1x, 2x, 3x of the recipe's updates), a student written at
each, every student measured on the quality axis on val objects by one sweep (paired with the
50-step teacher on the same objects and noise), and the curve of each verdict metric against the
student's measured wall time (preparation included) per method. Writes <out>.json, <out>.md and
<out>.png.

    python scripts/budget_curves.py --teacher shipped/teacher --run-root runs/budget \
        --out docs/methods/budget_curves

Compute is spent once: a method whose schedule does not depend on the run's length trains one run
extended budget by budget (each student is that run stopped there: the 1x student is the equal
budget one, 3x costs 3x); a method whose schedule spans the run (progressive's rounds, reflow's
last stage: ``Method.schedule_spans_run``) trains one whole run per budget. A killed run
resumes; students already written are kept.

Methods may be trained in several sessions (``--methods``): a run writes its methods' curves
and keeps those of the other methods already in ``<out>.json`` when they were measured with the
same teacher, val objects and world (another setting is refused, naming it). Each method
records the session it was trained in: the machine, the date and ``reference_s``, the median
time of one teacher forward at batch 16 measured at the start of that session, so wall times of
methods trained on machines of different speed can be put side by side (``student_passes``,
every network's passes, does not depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRACTIONS = (0.5, 1.0, 2.0, 3.0)
STEPS = (1, 2, 4)  # the student step counts measured (those a student serves)
METRICS = (  # (row key, panel title)
    ("seen_psnr", "seen-side PSNR (dB)"),
    ("unseen_dist", "unseen-side distance"),
    ("fid", "FID (lab encoder)"),
    ("consistency_psnr", "3D consistency PSNR (dB)"),
    ("sharpness", "sharpness (1 = truth)"),
)


def plan(
    methods: list[str], fractions: list[float], run_root: Path, smoke: bool, base_steps: int = 0
) -> list[dict]:
    """One entry per (method, fraction): its updates, run folder and student folder, in the
    order they are trained (a shared run's budgets in increasing order)."""
    from distill.methods import SMOKE_SETTINGS, get_method

    out = []
    for m in methods:
        recipe = ROOT / "configs" / "methods" / f"{m}.yaml"
        base = base_steps or int(yaml.safe_load(recipe.read_text())["train"]["steps"])
        spans = get_method(m).schedule_spans_run
        for f in sorted(fractions):
            steps = max(1, round(f * base))
            run = run_root / m / (f"x{f:g}" if spans else "run")
            out.append(
                {
                    "method": m,
                    "fraction": f,
                    "updates": steps,
                    "recipe": str(recipe.relative_to(ROOT)),
                    "run_dir": str(run),
                    "student": str(run_root / m / f"{m}_x{f:g}"),  # the sweep's name
                    "own_run": spans,
                    "smoke": SMOKE_SETTINGS[m] if smoke else [],
                }
            )
    return out


def train(entry: dict, teacher: str, extra: list[str]) -> bool:
    """Train (or resume) the run to the entry's updates and write its student; False when the
    student was already written (nothing trained)."""
    from distill.train_cmd import train_student

    if (Path(entry["student"]) / "student.json").exists():
        return False
    args = [
        str(ROOT / entry["recipe"]),
        f"run_dir={entry['run_dir']}",
        f"out={entry['student']}",
        f"train.steps={entry['updates']}",
        "eval_count=0",  # measured below, all students by one sweep
        *entry["smoke"],
        *extra,
    ]
    print(f"[{entry['method']} x{entry['fraction']:g}] {' '.join(args)}", flush=True)
    train_student(entry["method"], args, teacher_dir=teacher)
    return True


def reference_seconds(teacher_dir: str, batch: int = 16, repeats: int = 5) -> float:
    """Median seconds of one teacher forward at ``batch`` (no gradient), after one warm-up, on
    the device the methods train on: how fast this session's machine runs the network every
    method calls."""
    from distill.bench_teacher import teacher_inputs
    from eval.timing import time_ms
    from teachers.io import load_teacher
    from training.processes import train_device

    dev = train_device()
    teacher = load_teacher(teacher_dir).requires_grad_(False).to(dev)
    x, t, cond = teacher_inputs(teacher, batch, dev)
    ms = time_ms(lambda: teacher(x, t, cond), dev, warmup=1, repeats=repeats)
    return round(ms / 1000, 4)


def merge(path: Path, res: dict) -> dict:
    """``res`` with the curves of methods it did not train kept from an earlier ``path``
    (same teacher, val objects and world; another setting is refused)."""
    if not path.exists():
        return res
    old = json.loads(path.read_text())
    for k in ("teacher_key", "objects", "world_version"):
        if old.get(k) != res.get(k):
            raise SystemExit(
                f"{path} holds curves measured with {k}={old.get(k)!r}, this run "
                f"{k}={res.get(k)!r}: write them to another --out, or remove it to start again"
            )
    ours = set(res["curves"])
    for m, per_steps in old.get("curves", {}).items():
        if m not in ours:
            res["curves"][m] = per_steps
        if m not in ours or res["sessions"].get(m) is None:  # re-measured, not retrained
            res["sessions"][m] = old.get("sessions", {}).get(m)
    res["plan"] = [e for e in old.get("plan", []) if e["method"] not in ours] + res["plan"]
    res["curves"] = dict(sorted(res["curves"].items()))
    res["sessions"] = dict(sorted(res["sessions"].items()))
    return res


def measure(students: list[str], a) -> tuple[list[dict], dict, dict]:
    """Every student at the step counts it serves among STEPS, on val objects, with paired
    differences to teacher@50 (one sweep: the same objects and noise for all). Returns the
    rows, the reference's row (teacher@50, from the sweep's cell cache) and the sweep's meta."""
    from distill.config import load_config
    from eval.sweep import Sweep, SweepConfig

    base = {
        "out": str(Path(a.run_root) / "sweep"),
        "models": students,
        "steps": list(STEPS),
        "teacher": a.teacher,
        "split": "val",  # choosing a budget is a choice: never the test split
        "objects": a.eval_count,
        "skip_unsupported": True,
        "latency_repeats": 1,  # timings are not what these curves report
    }
    cfg = load_config(SweepConfig, a.sweep_set, base=base)
    if cfg.split != "val":
        raise SystemExit("budget curves choose among budgets: they are measured on val objects")
    sweep = Sweep(cfg)
    rows = sweep.run()
    ref = sweep._cached("teacher", sweep.teacher, "euler", cfg.reference_steps, None)[0]
    meta = json.loads((Path(cfg.out) / "results.json").read_text())["meta"]
    return rows, ref, meta


def curves(entries: list[dict], rows: list[dict]) -> dict:
    """Per method and step count, the points along the budget: fraction, updates, measured wall
    seconds and every metric with its interval and its paired difference to teacher@50."""
    by_student = {}
    for r in rows:
        by_student.setdefault(r["model"], []).append(r)
    out: dict = {}
    for e in entries:
        card = json.loads((Path(e["student"]) / "student.json").read_text())
        cost = card.get("train_cost", {})
        for r in by_student.get(Path(e["student"]).name, []):
            p = {
                "fraction": e["fraction"],
                "updates": e["updates"],
                "wall_s": cost.get("wall_s"),
                "student_passes": cost.get("student_passes"),  # every network's passes
                "own_run": e["own_run"],
            }
            for k, _ in METRICS:
                if r.get(k) is not None:
                    p[k], p[k + "_ci95"] = r[k], r.get(k + "_ci95")
                    if r.get(f"vs_ref_{k}_diff") is not None:
                        p[k + "_vs_teacher50"] = r[f"vs_ref_{k}_diff"]
                        p[k + "_vs_teacher50_ci95"] = r.get(f"vs_ref_{k}_diff_ci95")
            out.setdefault(e["method"], {}).setdefault(str(r["steps"]), []).append(p)
    for per_steps in out.values():
        for pts in per_steps.values():
            pts.sort(key=lambda p: p["fraction"])
    return out


def write(out: Path, res: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text(report(res))
    plot(res, out.with_suffix(".png"))
    print(f"wrote {out}.json, .md, .png")


def report(res: dict) -> str:
    keys = [k for k, _ in METRICS]
    lines = [
        "# Quality against distillation compute",
        "",
        f"Val objects 0..{res['objects'] - 1} (world {res['world_version']}), teacher "
        f"`{res['teacher']}`; each figure with its 95% interval over objects; Δ: paired with "
        "teacher@50 on the same objects and noise. Wall time is the student's measured "
        "training cost including preparation, on the machine of the session that trained the "
        "method (below).",
        "",
        "| method | steps | budget | updates | network passes | wall min | "
        + " | ".join(f"{k} (Δ teacher@50)" for k in keys)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(keys),
    ]
    for m, per_steps in res["curves"].items():
        for steps, pts in per_steps.items():
            for p in pts:
                cells = []
                for k in keys:
                    if k not in p:
                        cells.append("n/a")
                        continue
                    c = f"{p[k]:.3g} ± {p[k + '_ci95'] or 0:.2g}"
                    if k + "_vs_teacher50" in p:
                        c += f" ({p[k + '_vs_teacher50']:+.3g} ± {p[k + '_vs_teacher50_ci95']:.2g})"
                    cells.append(c)
                wall = "n/a" if p["wall_s"] is None else f"{p['wall_s'] / 60:.1f}"
                passes = p.get("student_passes")
                passes = "n/a" if passes is None else f"{passes:,}"
                lines.append(
                    f"| {m} | {steps} | {p['fraction']:g}x | {p['updates']} | {passes} | {wall} | "
                    + " | ".join(cells)
                    + " |"
                )
    lines += [
        "",
        "Budget 1x is the recipe's equal budget (the shipped students); a method marked by "
        "`own_run` in the json trains one run per budget (its schedule spans the run), the "
        "others one run stopped at each budget. Network passes (every forward, backward and "
        "JVP of every network: student, teacher, targets, round teachers, fake score) do not "
        "depend on the machine; wall time does, and a shared CPU's speed drifts: the sessions' "
        "reference timings below say by how much.",
        "",
        "| method | trained on | date | reference_s (teacher forward, batch 16) |",
        "|---|---|---|---|",
    ]
    for m, sess in res.get("sessions", {}).items():
        sess = sess or {}
        lines.append(
            f"| {m} | {sess.get('machine', 'n/a')} | {sess.get('date', 'n/a')} | "
            f"{sess.get('reference_s', 'n/a')} |"
        )
    lines.append("")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    panels = [
        (k, t)
        for k, t in METRICS
        if any(k in p for ps in res["curves"].values() for pts in ps.values() for p in pts)
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (k, title) in zip(axes[0], panels):
        for m, per_steps in sorted(res["curves"].items()):
            steps = min(per_steps, key=int)  # each method at its fewest steps
            pts = [p for p in per_steps[steps] if k in p and p["wall_s"] is not None]
            if not pts:
                continue
            ax.errorbar(
                [p["wall_s"] / 60 for p in pts],
                [p[k] for p in pts],
                yerr=[p[k + "_ci95"] or 0.0 for p in pts],
                marker="o",
                capsize=2,
                label=f"{m}@{steps}",
            )
        ref = res.get("teacher50", {}).get(k)
        if ref is not None:
            ax.axhline(ref, color="k", ls="--", lw=0.8, label="teacher@50")
        if k == "sharpness":
            ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # minutes, not 2x10^0
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("distillation wall time (min, measured)")
        ax.set_title(title, fontsize=10)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"quality against distillation compute, val objects ({res['objects']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="", help="comma-separated (default: every method)")
    ap.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS))
    ap.add_argument("--teacher", default="shipped/teacher")
    ap.add_argument("--eval-count", type=int, default=64, help="val objects")
    ap.add_argument(
        "--base-steps", type=int, default=0, help="the 1x updates (default: each recipe's)"
    )
    ap.add_argument("--run-root", default="runs/budget")
    ap.add_argument("--out", default="docs/methods/budget_curves")
    ap.add_argument("--smoke", action="store_true", help="each method's smoke settings")
    ap.add_argument(
        "--set", action="append", default=[], help="key=value for every training run (smoke)"
    )
    ap.add_argument(
        "--sweep-set",
        action="append",
        default=[],
        help="key=value of the sweep's config (recon=, encoder=, data_root=, set_resamples=...)",
    )
    return ap.parse_args()


def main() -> None:
    from distill.methods import METHODS
    from distill.train_cmd import machine
    from samplers.protocol import folder_key

    a = _parse_args()
    methods = a.methods.split(",") if a.methods else list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    fractions = [float(f) for f in a.fractions.split(",")]
    if any(f <= 0 for f in fractions):
        raise SystemExit(f"--fractions must be positive, got {a.fractions}")
    entries = plan(methods, fractions, Path(a.run_root), a.smoke, a.base_steps)
    session = {
        "machine": machine(),
        "date": datetime.now().strftime("%Y-%m-%d"),
        "reference_s": reference_seconds(a.teacher),
    }
    trained = set()  # methods with a student trained by this run
    for e in entries:
        if train(e, a.teacher, a.set):
            trained.add(e["method"])
    rows, teacher50, meta = measure([e["student"] for e in entries], a)
    res = {
        "teacher": a.teacher,
        "teacher_key": folder_key(a.teacher),
        "objects": meta["objects"],
        "world_version": meta["world_version"],
        "fractions": fractions,
        "plan": entries,
        "teacher50": {k: teacher50.get(k) for k, _ in METRICS},
        "curves": curves(entries, rows),
        # a method measured again without training keeps the session that trained it (merge)
        "sessions": {m: session if m in trained else None for m in methods},
    }
    write(Path(a.out), merge(Path(a.out).with_suffix(".json"), res))


if __name__ == "__main__":
    main()
