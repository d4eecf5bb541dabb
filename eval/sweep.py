"""The step sweep: for each model (teacher, students) x sampler x step count, image -> views ->
Gaussians -> novel views on one fixed evaluation set, with quality, cost and a Pareto plot.

Every cell uses the same test objects and the same per-object noise seeds. Finished cells are
cached as JSON under ``<out>/cells``, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from eval.encoder import FeatureEncoder, distribution_distances
from eval.metrics import chamfer, load_lpips, mean_ci, psnr, ssim
from eval.timing import device_name, peak_memory_mb, sync, time_ms
from eval.views import view_metrics
from recon.model import Reconstructor
from scenes.data import open_eval_split
from scenes.world import unpack_gaussians, world_config
from students.sampling import sample_views
from students.student import LoadedStudent, load_student
from teachers.io import load_teacher


@dataclass
class SweepConfig:
    out: str = "runs/sweep"  # run folder (cells/, results.*, pareto.png, report.md)
    models: list[str] = field(default_factory=lambda: ["teacher"])  # "teacher" or student dirs
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 50])
    samplers: list[str] = field(default_factory=lambda: ["euler"])  # the teacher's samplers
    teacher: str = "shipped/teacher"
    teacher_guidance: float = 1.0  # the teacher's CFG scale
    recon: str = "shipped/recon"
    encoder: str = "shipped/encoder"
    data_root: str = "data/world"
    objects: int = 64  # test objects in the evaluation set
    batch: int = 32  # objects per generation batch
    latency_repeats: int = 5  # timed runs (median) after warm-up, batch 1
    throughput_batch: int = 16
    reference_steps: int = 50  # teacher steps of the agreement reference
    skip_unsupported: bool = False  # skip (with the reason) instead of failing
    device: str = "auto"  # auto | cpu | cuda


class _RssPeak:
    """Samples this process's resident memory in a thread (CPU peak-memory figure)."""

    def __enter__(self):
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, False
        self.base = self.proc.memory_info().rss
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *a):
        self.stop = True
        self.t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return rev + ("+uncommitted" if dirty else "")
    except Exception:
        return "unknown"


class Sweep:
    def __init__(self, cfg: SweepConfig):
        self.cfg = cfg
        dev = cfg.device
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
        )
        self.out = Path(cfg.out)
        self.teacher = load_teacher(cfg.teacher).to(self.device)
        self.recon = Reconstructor.load(cfg.recon).to(self.device)
        self.encoder = FeatureEncoder.load(cfg.encoder)
        self.models, self.skipped = self._load_models()
        world = None
        if "train_config" in self.recon.info:
            world = world_config(self.recon.info["train_config"]["world"])
        if self.recon.cfg.image_size != self.teacher.info.image_size:
            raise ValueError(
                f"reconstructor {cfg.recon} works at {self.recon.cfg.image_size}px, teacher "
                f"{cfg.teacher} at {self.teacher.info.image_size}px"
            )
        ds = open_eval_split(
            cfg.data_root, "test", cfg.objects, self.teacher.info.image_size, world
        )
        b = ds.batch(list(range(cfg.objects)))
        self.rig = ds.rig
        self.cond, self.gt, self.heldout = b["cond"], b["targets"], b["heldout"]
        self.truth_means = unpack_gaussians(b["gaussians"]).means
        self.seeds = [int(s) for s in b["seeds"]]

    def _load_models(self):
        models, skipped = {}, []
        for m in self.cfg.models:
            if m == "teacher":
                models["teacher"] = self.teacher
                continue
            try:
                st = load_student(m, teacher=self.teacher).to(self.device)
            except (FileNotFoundError, ValueError) as e:
                if not self.cfg.skip_unsupported:
                    raise
                skipped.append({"model": m, "reason": str(e)})
                continue
            models[Path(m).name] = st
        return models, skipped

    # --- one cell -------------------------------------------------------------------------
    def _generate(self, model, sampler: str, steps: int, cond: Tensor, seeds: list[int]):
        return sample_views(
            model, cond, steps, seeds, sampler, self.cfg.teacher_guidance, batch=self.cfg.batch
        )

    def _reconstruct(self, views: Tensor):
        vm = self.rig.target_viewmats.to(self.device)
        return self.recon(
            views.to(self.device), vm, self.rig.K.expand(len(vm), 3, 3).to(self.device)
        )

    def _render(self, g, viewmats: Tensor) -> Tensor:
        from eval.recon_eval import render_images

        return render_images(
            g, viewmats.to(self.device), self.rig.K.to(self.device), self.rig.size
        ).cpu()

    def reference(self) -> Tensor:
        path = self.out / "cells" / f"reference_teacher_{self.cfg.reference_steps}.pt"
        if path.exists():
            return torch.load(path)
        views, _ = self._generate(
            self.teacher, "euler", self.cfg.reference_steps, self.cond, self.seeds
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(views, path)
        return views

    def run_cell(self, name: str, model, sampler: str, steps: int, reference: Tensor) -> dict:
        cfg = self.cfg
        with torch.inference_mode():
            views, nfe = self._generate(model, sampler, steps, self.cond, self.seeds)
            vm = view_metrics(views, self.gt)
            e2e_p, e2e_s, cham, cons = [], [], [], []
            for i in range(0, views.shape[0], cfg.batch):
                g = self._reconstruct(views[i : i + cfg.batch])
                ren = self._render(g, self.rig.heldout_viewmats)
                e2e_p.append(psnr(ren, self.heldout[i : i + cfg.batch]).mean(1))
                e2e_s.append(ssim(ren, self.heldout[i : i + cfg.batch]).mean(1))
                cham.append(
                    chamfer(g.means.cpu(), g.opacities.cpu(), self.truth_means[i : i + cfg.batch])
                )
                back = self._render(g, self.rig.target_viewmats)
                cons.append(psnr(back, views[i : i + cfg.batch]).mean(1))
            dist = distribution_distances(self.encoder, self.gt.flatten(0, 1), views.flatten(0, 1))
        row = {
            "model": name,
            "method": _method(model),
            "sampler": sampler,
            "steps": steps,
            "nfe": nfe,
            "objects": len(self.seeds),
        }
        per = {
            "view0_psnr": vm["psnr_v0"],
            "view0_ssim": vm["ssim_v0"],
            "unseen_psnr": vm["psnr_unseen"],
            "unseen_ssim": vm["ssim_unseen"],
            "e2e_psnr": torch.cat(e2e_p),
            "e2e_ssim": torch.cat(e2e_s),
            "chamfer": torch.cat(cham),
            "consistency_psnr": torch.cat(cons),
            "teacher_psnr": psnr(views, reference).mean(1),
        }
        for k, v in per.items():
            row[k], row[k + "_ci95"] = mean_ci(v)
        row.update(dist)
        lp, reason = load_lpips()
        row["lpips"] = None
        row["lpips_missing"] = reason if lp is None else ""
        row.update(self.cost(model, sampler, steps))
        return row

    def cost(self, model, sampler: str, steps: int) -> dict:
        """Stage latencies at batch 1 (median after warm-up), throughput at a batch, memory."""
        cfg, dev = self.cfg, self.device
        c1, s1 = self.cond[:1].to(dev), self.seeds[:1]
        views, _ = self._generate(model, sampler, steps, c1, s1)
        g = self._reconstruct(views)
        r = cfg.latency_repeats
        diff = time_ms(lambda: self._generate(model, sampler, steps, c1, s1), dev, repeats=r)
        rec = time_ms(lambda: self._reconstruct(views), dev, repeats=r)
        ren = time_ms(lambda: self._render(g, self.rig.heldout_viewmats), dev, repeats=r)
        nb = cfg.throughput_batch
        cb = self.cond[:nb].to(dev)
        sb = self.seeds[:nb]

        def pipeline():
            v, _ = self._generate(model, sampler, steps, cb, sb)
            self._render(self._reconstruct(v), self.rig.heldout_viewmats)

        with torch.inference_mode():
            pipeline()  # warm-up
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(dev)
            with _RssPeak() as rss:
                t0 = time.perf_counter()
                pipeline()
                sync(dev)
                dt = time.perf_counter() - t0
        mem = peak_memory_mb(dev)
        return {
            "diffusion_ms": diff,
            "recon_ms": rec,
            "render_ms": ren,
            "total_ms": diff + rec + ren,
            "throughput_per_s": cb.shape[0] / dt,
            "throughput_batch": int(cb.shape[0]),
            "peak_mem_mb": mem if mem is not None else (rss.peak - rss.base) / 2**20,
            "peak_mem_kind": "cuda max allocated"
            if mem is not None
            else "cpu resident set growth during the batch run",
            "device": device_name(dev),
        }

    # --- the grid -------------------------------------------------------------------------
    def cells(self) -> list[tuple[str, object, str, int]]:
        out = []
        for name, model in self.models.items():
            samplers = (
                self.cfg.samplers if not isinstance(model, LoadedStudent) else [model.card.sampler]
            )
            for sampler in samplers:
                for steps in self.cfg.steps:
                    if isinstance(model, LoadedStudent) and steps not in model.card.steps:
                        reason = (
                            f"{name} ({model.card.method}) does not support {steps} steps;"
                            f" supported: {model.card.steps}"
                        )
                        if not self.cfg.skip_unsupported:
                            raise ValueError(reason + " (set skip_unsupported=true to skip)")
                        self.skipped.append({"model": name, "steps": steps, "reason": reason})
                        continue
                    out.append((name, model, sampler, steps))
        return out

    def run(self) -> list[dict]:
        cells = self.cells()
        (self.out / "cells").mkdir(parents=True, exist_ok=True)
        reference = self.reference()
        rows = []
        for name, model, sampler, steps in tqdm(cells, desc="sweep cells", unit="cell"):
            path = self.out / "cells" / f"{name}__{sampler}__{steps}.json"
            if path.exists():
                rows.append(json.loads(path.read_text()))
                continue
            row = self.run_cell(name, model, sampler, steps, reference)
            row["train_seconds"] = _train_seconds(model)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(row, indent=2))
            tmp.replace(path)
            rows.append(row)
        self.write(rows)
        return rows

    def write(self, rows: list[dict]) -> None:
        meta = {
            "commit": _commit(),
            "config": asdict(self.cfg),
            "device": device_name(self.device),
            "objects": len(self.seeds),
            "eval_set": f"test split objects 0..{len(self.seeds) - 1}",
            "skipped": self.skipped,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (self.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        keys = list(rows[0].keys()) if rows else []
        with open(self.out / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        pareto_plot(rows, self.out / "pareto.png")
        (self.out / "report.md").write_text(report(rows, meta))
        print(results_table(rows))
        print(f"wrote {self.out / 'results.json'}, results.csv, pareto.png, report.md")


def _method(model) -> str:
    return model.card.method if isinstance(model, LoadedStudent) else "teacher"


def _train_seconds(model) -> float:
    """A student's whole measured training cost (preparation included: ``train_cost.wall_s``);
    cards made before it was recorded give their loop time only."""
    if isinstance(model, LoadedStudent):
        cost = model.card.train_cost or {}
        if "wall_s" in cost:
            return float(cost["wall_s"])
        return float(model.card.train_config.get("train_seconds", 0.0))
    return 0.0


def _label(r: dict) -> str:
    return r["model"] if r["method"] != "teacher" else f"teacher ({r['sampler']})"


def pareto_plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_label(r), []).append(r)
    for ax, key, better in ((axes[0], "e2e_psnr", "higher"), (axes[1], "fid", "lower")):
        for label, rs in sorted(groups.items()):
            rs = sorted(rs, key=lambda r: r["total_ms"])
            xs, ys = [r["total_ms"] for r in rs], [r[key] for r in rs]
            style = "k--" if label.startswith("teacher") else "-"
            line = ax.plot(xs, ys, style, marker="o", label=label)[0]
            for r, x, y in zip(rs, xs, ys):
                ax.annotate(
                    str(r["steps"]),
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                    color=line.get_color(),
                )
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency per object, ms (log; batch 1)")
        ax.set_ylabel(
            f"{'end-to-end held-out PSNR, dB' if key == 'e2e_psnr' else 'FID (lab encoder)'}"
            f" ({better} is better)"
        )
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    dev = rows[0]["device"] if rows else ""
    fig.suptitle(
        f"image -> views -> Gaussians -> novel views; labels = sampling steps; {dev}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def results_table(rows: list[dict]) -> str:
    head = (
        "| model | method | sampler | steps | NFE | e2e PSNR | e2e SSIM | FID | KID | "
        "view0 PSNR | unseen PSNR | Chamfer | consistency PSNR | vs teacher@50 PSNR | "
        "diffusion ms | recon ms | render ms | total ms | throughput/s | peak MB |"
    )
    lines = [head, "|" + "---|" * 20]
    for r in sorted(
        rows, key=lambda r: (r["method"] != "teacher", r["model"], r["sampler"], r["steps"])
    ):
        lines.append(
            f"| {r['model']} | {r['method']} | {r['sampler']} | {r['steps']} | {r['nfe']} | "
            f"{r['e2e_psnr']:.2f} ± {r['e2e_psnr_ci95']:.2f} | {r['e2e_ssim']:.3f} | "
            f"{r['fid']:.2f} | {r['kid']:.4f} | {r['view0_psnr']:.2f} | {r['unseen_psnr']:.2f} | "
            f"{r['chamfer']:.4f} | {r['consistency_psnr']:.2f} | {r['teacher_psnr']:.2f} | "
            f"{r['diffusion_ms']:.1f} | {r['recon_ms']:.1f} | {r['render_ms']:.1f} | "
            f"{r['total_ms']:.1f} | {r['throughput_per_s']:.2f} | {r['peak_mem_mb']:.0f} |"
        )
    return "\n".join(lines)


def amortised(rows: list[dict], reference_steps: int = 50) -> tuple[str, list[str]]:
    """Per-asset cost (distillation time / assets + inference time) for 1e2..1e7 assets, the
    teacher at the reference step count vs each student at its fewest steps."""
    teacher = [r for r in rows if r["method"] == "teacher" and r["steps"] == reference_steps]
    if not teacher:
        return "(no teacher cell at the reference step count)", []
    t = min(teacher, key=lambda r: r["total_ms"])
    cols = [(f"teacher@{t['steps']}", t)]
    for name in sorted({r["model"] for r in rows if r["method"] != "teacher"}):
        rs = [r for r in rows if r["model"] == name]
        r = min(rs, key=lambda r: r["steps"])
        cols.append((f"{name}@{r['steps']}", r))
    volumes = [10**k for k in range(2, 8)]
    lines = ["| assets | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for a in volumes:
        cells = [
            f"{(r['train_seconds'] / a + r['total_ms'] / 1000) * 1000:.1f} ms" for _, r in cols
        ]
        lines.append(f"| {a:.0e} | " + " | ".join(cells) + " |")
    notes = []
    for c, r in cols[1:]:
        saving = t["total_ms"] / 1000 - r["total_ms"] / 1000
        if saving <= 0:
            notes.append(f"{c}: never breaks even (not faster than the teacher)")
        else:
            notes.append(
                f"{c}: breaks even after {math.ceil(r['train_seconds'] / saving):,} assets "
                f"({r['train_seconds'] / 60:.1f} min of distillation, "
                f"{saving * 1000:.0f} ms saved per asset)"
            )
    return "\n".join(lines), notes


def report(rows: list[dict], meta: dict) -> str:
    ref = meta["config"]["reference_steps"]
    table = results_table(rows)
    amort, notes = amortised(rows, ref)
    lines = [
        "# Step sweep: image -> views -> Gaussians -> novel views",
        "",
        f"Commit `{meta['commit']}`, {meta['created']}, device: {meta['device']}.",
        f"Evaluation set: {meta['eval_set']} ({meta['objects']} objects, never seen in training),"
        " the same per-object noise seeds in every cell. ± is the 95% confidence half-width"
        " over objects.",
        "",
        "![pareto](pareto.png)",
        "",
        "## Results",
        "",
        table,
        "",
    ]
    teacher_ref = [r for r in rows if r["method"] == "teacher" and r["steps"] == ref]
    if teacher_ref:
        t = teacher_ref[0]
        lines += [
            "## Best method per step count",
            "",
            "Among the distillation students (not the `finetune` control), ranked by FID: PSNR"
            " against the one true object rewards the blurry mean of the possible unseen sides,"
            " FID measures whether the outputs look like real objects.",
            "",
        ]
        for steps in (1, 2, 4):
            cand = [
                r
                for r in rows
                if r["steps"] == steps and r["method"] not in ("teacher", "finetune")
            ]
            if not cand:
                continue
            best = min(cand, key=lambda r: r["fid"])
            same = [r for r in rows if r["steps"] == steps and r["method"] == "teacher"]
            gap_p, gap_f = best["e2e_psnr"] - t["e2e_psnr"], best["fid"] - t["fid"]
            plural = "s" if steps > 1 else ""
            line = (
                f"- {steps} step{plural}: **{best['model']}** ({best['method']}), FID "
                f"{best['fid']:.2f} ({gap_f:+.2f} vs the teacher at {ref}), e2e PSNR "
                f"{best['e2e_psnr']:.2f} dB ({gap_p:+.2f} dB)"
            )
            if same:
                s0 = same[0]
                fid_beat = [r["model"] for r in cand if r["fid"] < s0["fid"]]
                psnr_beat = [r["model"] for r in cand if r["e2e_psnr"] > s0["e2e_psnr"]]
                line += (
                    f". The teacher at {steps} step{plural}: FID {s0['fid']:.2f}, e2e PSNR "
                    f"{s0['e2e_psnr']:.2f} dB; better FID: {', '.join(fid_beat) or 'none'}"
                    f" ({len(fid_beat)}/{len(cand)}); better e2e PSNR: "
                    f"{', '.join(psnr_beat) or 'none'} ({len(psnr_beat)}/{len(cand)})"
                )
            lines.append(line)
        lines.append("")
    lines += [
        "## Amortised cost per asset",
        "",
        "Per asset: distillation training time / number of assets + end-to-end inference"
        " time (batch 1). The teacher's own training is common to all and not counted.",
        "",
        amort,
        "",
    ] + [f"- {n}" for n in notes]
    if meta["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in meta["skipped"]]
    missing = {r.get("lpips_missing") for r in rows if r.get("lpips_missing")}
    if missing:
        lines += ["", "## Missing metrics", "", f"- LPIPS: {missing.pop()}"]
    lines += [
        "",
        "Regenerate with the command in `README.md` (docs/sweep); never edit by hand.",
        "",
    ]
    return "\n".join(lines)
