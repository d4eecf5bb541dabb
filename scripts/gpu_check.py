"""The lab on a CUDA device, end to end (run through scripts/gpu_check.sh):

1. every method's recipe (configs/methods/*.yaml) for a few updates on the shipped teacher, each
   run checked to have trained on the GPU (train_summary.json's device) and its student sampled
   there (finite views);
2. the shipped teacher's recipe for a few updates (the cost of an update on this device);
3. a sweep of the teacher and the shipped students on a few test objects (quality, latency and
   memory on this GPU);
4. the service on the GPU: a generate request, a hot swap to another student, a second request
   and the Prometheus page.

Prints each part's figures and writes them to <out>/gpu_check.json; every part runs even when
one fails, and the exit status is non-zero if any did. The figures of part 1 come from a few
updates: they show the code runs on the device and what an update costs there, not what a
student learns.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scenes.data import DATA_ROOT  # noqa: E402


def _methods(args, out: Path, dev: torch.device) -> list[dict]:
    from distill.methods import SMOKE_SETTINGS
    from distill.train_cmd import train_student
    from eval.views import test_objects
    from students.folder import LoadedStudent
    from students.sampling import sample_views

    rows = []
    for recipe in sorted((ROOT / "configs/methods").glob("*.yaml")):
        m = recipe.stem
        run = out / "students" / m
        shutil.rmtree(run, ignore_errors=True)  # a fresh run: a check never resumes
        t0 = time.perf_counter()
        folder = train_student(
            m,
            [
                str(recipe),
                f"teacher={args.teacher}",
                f"run_dir={run}",
                "out=",
                f"data.root={args.data_root}",
                f"data.train_count={args.train_objects}",
                f"train.steps={args.updates}",
                "train.batch_size=4",
                "train.warmup=1",
                "train.log_every=1",
                "eval_count=0",
                *SMOKE_SETTINGS[m],
            ],
        )
        wall = time.perf_counter() - t0
        summary = json.loads((run / "train_summary.json").read_text())
        if not summary["device"].startswith(dev.type):
            raise RuntimeError(f"{m} trained on {summary['device']}, not on {dev.type}")
        st = LoadedStudent.from_pretrained(folder).to(dev)
        cond, _, seeds = test_objects(args.data_root, 2, st.info.image_size)
        views, nfe = sample_views(st, cond, min(st.card.steps), seeds)
        if not torch.isfinite(views).all():
            raise RuntimeError(f"{m}: non-finite views from its student on the GPU")
        cost = json.loads((run / "train_cost.json").read_text())
        rows.append(
            {
                "method": m,
                "updates": summary["steps"],
                "device": summary["device"],
                "train_s": cost["train_s"],
                "s_per_update": round(cost["train_s"] / max(1, cost["updates"]), 3),
                "command_s": round(wall, 1),
                "final_loss": round(summary["final"]["loss"], 5),
                "sample_steps": min(st.card.steps),
                "sample_nfe": nfe,
            }
        )
        print(f"[gpu_check] method {m}: {rows[-1]}", flush=True)
    return rows


def _teacher(args, out: Path, dev: torch.device) -> dict:
    """The shipped teacher's recipe (v3, stage 1) for a few updates: what an update costs here."""
    from distill.teacher_cmd import train_teacher

    run = out / "teacher"
    shutil.rmtree(run, ignore_errors=True)
    train_teacher(
        [
            str(ROOT / "configs/teacher/v3.yaml"),
            f"run_dir={run}",
            f"out={run / 'teacher'}",
            f"data.root={args.data_root}",
            f"data.train_count={args.train_objects}",
            f"train.steps={args.teacher_updates}",
            "train.log_every=1",
        ]
    )
    summary = json.loads((run / "train_summary.json").read_text())
    if not summary["device"].startswith(dev.type):
        raise RuntimeError(f"the teacher trained on {summary['device']}, not on {dev.type}")
    rows = [r.split(",") for r in (run / "losses.csv").read_text().splitlines()[1:]]
    steps, elapsed = [int(r[0]) for r in rows], [float(r[2]) for r in rows]
    warm = len(rows) // 5  # the first updates include one-off work (kernels, allocator)
    per = (elapsed[-1] - elapsed[warm]) / max(1, steps[-1] - steps[warm])
    result = {
        "updates": steps[-1],
        "s_per_update_steady": round(per, 4),
        "device": summary["device"],
    }
    print(f"[gpu_check] teacher recipe: {result}", flush=True)
    return result


def _sweep(args, out: Path, dev: torch.device) -> tuple[list[dict], Path]:
    from eval.sweep import Sweep, SweepConfig

    students = sorted(p for p in Path(args.students).iterdir() if (p / "student.json").exists())
    cfg = SweepConfig(
        out=str(out / "sweep"),
        models=["teacher", *map(str, students)],
        steps=[1, 2, 4],
        teacher=args.teacher,
        recon=args.recon,
        encoder=args.encoder,
        data_root=args.data_root,
        split="test",
        objects=args.objects,
        batch=args.objects,
        skip_unsupported=True,
        device=dev.type,
    )
    rows = Sweep(cfg).run()
    keep = ("model", "steps", "nfe", "total_ms", "throughput_per_s", "peak_mem_mb")
    keep += ("seen_psnr_view0", "sharpness", "fid", "device")
    table = [{k: r[k] for k in keep if k in r} for r in rows]
    for r in table:
        print(f"[gpu_check] sweep {r}", flush=True)
    return table, out / "sweep" / "results.json"


def _serve(args, sweep_json: Path | None, dev: torch.device) -> dict:
    from fastapi.testclient import TestClient
    from PIL import Image

    from eval.views import test_objects
    from serve.app import ServeConfig, create_app
    from teachers.io import load_teacher

    size = load_teacher(args.teacher).info.image_size
    cond, _, _ = test_objects(args.data_root, 1, size)
    img = ((cond[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    names = sorted(p.name for p in Path(args.students).iterdir() if (p / "student.json").exists())
    if len(names) < 2:
        raise RuntimeError(f"the serving check needs two students under {args.students}")
    cfg = ServeConfig(
        students=args.students,
        reconstructor=args.recon,
        teacher=args.teacher,
        default=names[0],
        sweep=str(sweep_json) if sweep_json else "",
        admin_token="gpu-check",
        device=dev.type,
    )
    result = {}
    with TestClient(create_app(cfg)) as client:
        for i, name in enumerate(names[:2]):
            if i:
                r = client.post(
                    f"/v1/students/{name}/activate", headers={"Authorization": "Bearer gpu-check"}
                )
                if r.status_code != 200:
                    raise RuntimeError(f"activating {name}: {r.status_code} {r.text}")
            r = client.post(
                "/v1/generate?steps=1&seed=0",
                content=buf.getvalue(),
                headers={"content-type": "image/png"},
            )
            if r.status_code != 200:
                raise RuntimeError(f"generate with {name}: {r.status_code} {r.text}")
            body = r.json()
            if body["student"] != name:
                raise RuntimeError(f"asked {name}, served {body['student']}")
            result[name] = {"status": r.status_code, "timings_ms": body["timings_ms"]}
            print(f"[gpu_check] serve {name}: {result[name]}", flush=True)
        page = client.get("/metrics")
        if page.status_code != 200 or "distill_" not in page.text:
            raise RuntimeError(f"/metrics: {page.status_code}")
        result["metrics_lines"] = len(page.text.splitlines())
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--teacher", default="shipped/teacher")
    ap.add_argument("--students", default="shipped/students")
    ap.add_argument("--recon", default="shipped/recon")
    ap.add_argument("--encoder", default="shipped/encoder")
    ap.add_argument("--data-root", default=DATA_ROOT)
    ap.add_argument("--updates", type=int, default=3, help="updates per method")
    ap.add_argument("--train-objects", type=int, default=16)
    ap.add_argument("--objects", type=int, default=4, help="test objects of the sweep")
    ap.add_argument("--teacher-updates", type=int, default=60)
    ap.add_argument("--parts", default="methods,teacher,sweep,serve")
    ap.add_argument(
        "--device", default="cuda", help="cpu rehearses the same steps here (not a GPU check)"
    )
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        sys.exit(2)
    if dev.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # training follows (training.processes.train_device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    if dev.type == "cuda":
        from recon.raster import gsplat_status

        t0 = time.perf_counter()
        ok, why = gsplat_status()  # builds gsplat's extension on first use
        report["rasterizer"] = "gsplat" if ok else f"lab tile rasterizer (gsplat: {why})"
        report["rasterizer_setup_s"] = round(time.perf_counter() - t0, 1)
        print(f"[gpu_check] rasterizer: {report['rasterizer']}", flush=True)
    parts, failed = args.parts.split(","), []
    t0 = time.perf_counter()
    found = {"sweep": None}  # the sweep's results.json, for the service's latency budgets
    for name, run in [
        ("methods", lambda: _methods(args, out, dev)),
        ("teacher", lambda: _teacher(args, out, dev)),
        ("sweep", lambda: _sweep(args, out, dev)),
        ("serve", lambda: _serve(args, found["sweep"], dev)),
    ]:
        if name not in parts:
            continue
        try:  # every part runs, so one call of a rented machine tells as much as it can
            result = run()
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            report[name] = {"failed": f"{type(e).__name__}: {e}"}
            failed.append(name)
            continue
        if name == "sweep":
            result, found["sweep"] = result
        report[name] = result
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    if failed:
        print(f"[gpu_check] FAILED: {', '.join(failed)} (details in {out / 'gpu_check.json'})")
        sys.exit(1)
    print(f"[gpu_check] all parts passed in {report['seconds']} s: {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
