"""The step sweep: for each model (teacher, students) x sampler x step count, image -> views ->
Gaussians on one fixed evaluation set, measured on the quality axis (eval/quality.py) with
intervals over objects, with cost and a Pareto plot (eval/plot.py) and a report
(eval/report.py).

Every cell uses the same test objects and the same per-object noise seeds. Finished cells are
cached under ``<out>/cells`` keyed by the weight hashes of teacher, student, reconstructor and
encoder, the sampling configuration and the evaluation set, so an interrupted sweep resumes and a
stale cell is never reused.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from distill.config import DATA_ROOT
from eval.encoder import FeatureEncoder
from eval.metrics import load_lpips, psnr
from eval.plot import pareto_plot
from eval.quality import QualityAxis, Truth
from eval.report import VERDICT_METRICS, report, results_table
from eval.stats import excludes_zero
from eval.timing import RssPeak, device_name, git_commit, peak_memory_mb, sync, time_ms
from recon.model import Reconstructor
from scenes.data import open_eval_split
from scenes.world import check_views_fit, model_world, world_id
from students.sampling import sample_views
from students.student import load_student
from teachers.base import file_hash
from teachers.io import load_teacher

AXIS_VERSION = 2  # bump when a metric's definition changes: cached cells become stale


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
    calibration: str = "docs/metrics/calibration.json"  # which metrics may decide verdicts
    data_root: str = DATA_ROOT
    split: str = "test"  # test: the final report; val: choosing recipes and checkpoints
    objects: int = 256  # objects in the evaluation set
    batch: int = 32  # objects per generation batch
    latency_repeats: int = 3  # timed runs (median) after warm-up, batch 1
    throughput_batch: int = 16
    reference_steps: int = 50  # teacher steps of the reference every row is paired against
    skip_unsupported: bool = False  # skip (with the reason) instead of failing
    merge_lora: bool = True  # LoRA students sample with adapters merged (as served)
    device: str = "auto"  # auto | cpu | cuda


def _folder_hash(folder: str | Path, name: str) -> str:
    p = Path(folder) / name
    return file_hash(p) if p.exists() else "missing"


class Sweep:
    def __init__(self, cfg: SweepConfig):
        self.cfg = cfg
        dev = cfg.device
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
        )
        self.out = Path(cfg.out)
        self.teacher = load_teacher(cfg.teacher).to(self.device)
        self.recon = Reconstructor.load(cfg.recon).to(self.device).eval()
        self.encoder = FeatureEncoder.load(cfg.encoder)
        world = model_world(self.recon.info, self.recon.cfg.image_size)
        self.recon_world = world  # the rig every model's views must be
        self.models, self.skipped = self._load_models()
        if self.recon.cfg.image_size != self.teacher.info.image_size:
            raise ValueError(
                f"reconstructor {cfg.recon} works at {self.recon.cfg.image_size}px, teacher "
                f"{cfg.teacher} at {self.teacher.info.image_size}px"
            )
        ds = open_eval_split(
            cfg.data_root, cfg.split, cfg.objects, self.teacher.info.image_size, world
        )
        b = ds.batch(list(range(cfg.objects)))
        self.world = ds.world
        self.rig = ds.rig
        self.truth = Truth.from_batch(b, ds.rig, ds.world.version)
        self.cond = b["cond"]
        self.seeds = [int(s) for s in b["seeds"]]
        self.lpips, self.lpips_missing = load_lpips()  # once per sweep
        self.axis = QualityAxis(
            self.truth, self.recon, self.encoder, cfg.batch, self.device, self.lpips
        )
        self.hashes = {
            "teacher": self.teacher.weights_key(),
            "recon": _folder_hash(cfg.recon, "model.safetensors"),
            "encoder": _folder_hash(cfg.encoder, "model.safetensors"),
            "world": world_id(ds.world),
            "split": cfg.split,
            "seeds": hashlib.sha256(json.dumps(self.seeds).encode()).hexdigest()[:16],
            "axis": AXIS_VERSION,
            "reference_steps": cfg.reference_steps,  # teacher_psnr and vs_ref_* depend on it
            "lpips": self.lpips is not None,
        }

    def _load_models(self):
        models, skipped = {}, []
        self.recon_views = {}  # id(model) -> the indices of the views the reconstructor takes
        for m in self.cfg.models:
            if m == "teacher":
                pick = check_views_fit(self.teacher, self.recon_world, "the teacher")
                self.recon_views[id(self.teacher)] = pick
                models["teacher"] = self.teacher
                continue
            try:
                st = load_student(m, teacher=self.teacher, merge=self.cfg.merge_lora)
                pick = check_views_fit(st, self.recon_world, m)
                st = st.to(self.device)
                self.recon_views[id(st)] = pick
            except (FileNotFoundError, ValueError) as e:
                if not self.cfg.skip_unsupported:
                    raise
                skipped.append({"model": m, "reason": str(e)})
                continue
            models[Path(m).name] = st
        return models, skipped

    def cell_key(self, model, sampler: str, steps: int) -> str:
        """Hash of everything a cell's figures depend on."""
        key = {
            **self.hashes,
            "model": model.weights_key(),
            "sampler": sampler,
            "steps": steps,
            "guidance": self.cfg.teacher_guidance,
            "batch": self.cfg.batch,
            "merged": bool(getattr(model, "merge", False)),
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    # --- one cell -------------------------------------------------------------------------
    def _generate(self, model, sampler: str, steps: int, cond: Tensor, seeds: list[int]):
        """The generated views the reconstructor takes (a model that makes more views than its
        rig is judged on the rig's ones), and the NFE."""
        views, nfe = sample_views(
            model, cond, steps, seeds, sampler, self.cfg.teacher_guidance, batch=self.cfg.batch
        )
        pick = self.recon_views.get(id(model))
        return (views if pick is None else views[:, pick]), nfe

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

    def run_cell(self, name: str, model, sampler: str, steps: int, reference: Tensor | None):
        """The cell's summary row and its per-object figures (for paired comparisons)."""
        with torch.inference_mode():
            views, nfe = self._generate(model, sampler, steps, self.cond, self.seeds)
            per = self.axis.evaluate(views)
            if reference is not None:
                per["teacher_psnr"] = psnr(views, reference).mean(1)
        row = {
            "model": name,
            "method": model.method,
            "sampler": sampler,
            "steps": steps,
            "nfe": nfe,
            **self.axis.summary(per),
        }
        if "teacher_psnr" in per:
            from eval.stats import mean_ci

            row["teacher_psnr"], row["teacher_psnr_ci95"] = mean_ci(per["teacher_psnr"])
        row.update(self.cost(model, sampler, steps))
        return row, per, views

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
            self._reconstruct(v)

        with torch.inference_mode():
            pipeline()  # warm-up
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(dev)
            with RssPeak() as rss:
                t0 = time.perf_counter()
                pipeline()
                sync(dev)
                dt = time.perf_counter() - t0
        mem = peak_memory_mb(dev)
        return {
            "diffusion_ms": diff,
            "recon_ms": rec,
            "total_ms": diff + rec,  # what a user waits for: image -> views -> Gaussians
            "render_ms": ren,  # rendering the evaluation views, reported on its own
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
            samplers = [model.own_sampler] if model.own_sampler else self.cfg.samplers
            for sampler in samplers:
                for steps in self.cfg.steps:
                    supported = model.supported_steps
                    if supported is not None and steps not in supported:
                        reason = (
                            f"{name} ({model.method}) does not support {steps} steps;"
                            f" supported: {supported}"
                        )
                        if not self.cfg.skip_unsupported:
                            raise ValueError(reason + " (set skip_unsupported=true to skip)")
                        self.skipped.append({"model": name, "steps": steps, "reason": reason})
                        continue
                    out.append((name, model, sampler, steps))
        return out

    def _cached(self, name, model, sampler, steps, reference, ref_per=None):
        """(row, per-object figures, views) of a cell from its keyed cache, else computed, with
        its paired differences to the reference cell (``ref_per``; none given: this cell is the
        reference, paired with itself) stored in the row."""
        key = self.cell_key(model, sampler, steps)
        base = self.out / "cells" / f"{name}__{sampler}__{steps}__{key}"
        js, pt = base.with_suffix(".json"), base.with_suffix(".pt")
        if js.exists() and pt.exists():
            data = torch.load(pt)
            return json.loads(js.read_text()), data["per"], data["views"]
        row, per, views = self.run_cell(name, model, sampler, steps, reference)
        row["cell_key"] = key
        row["train_seconds"] = _train_seconds(model)
        against = per if ref_per is None else ref_per
        row.update({"vs_ref_" + k: v for k, v in self.axis.paired(per, against).items()})
        for path, write in (
            (pt, lambda p: torch.save({"per": per, "views": views.half()}, p)),
            (js, lambda p: p.write_text(json.dumps(row, indent=2))),
        ):
            tmp = path.with_name(path.name + ".tmp")
            write(tmp)
            tmp.replace(path)
        return row, per, views

    def run(self) -> list[dict]:
        cells = self.cells()
        (self.out / "cells").mkdir(parents=True, exist_ok=True)
        ref_steps = self.cfg.reference_steps
        _, ref_per, ref_views = self._cached("teacher", self.teacher, "euler", ref_steps, None)
        ref_views = ref_views.float()
        rows, pers = [], {}
        for name, model, sampler, steps in tqdm(cells, desc="sweep cells", unit="cell"):
            row, per, _ = self._cached(name, model, sampler, steps, ref_views, ref_per)
            rows.append(row)
            pers[(name, sampler, steps)] = per
        self.write(rows, pers)
        return rows

    # --- verdicts ---------------------------------------------------------------------------
    def usable_metrics(self) -> tuple[list[str], list[str], dict]:
        """Verdict metrics that pass the calibration and apply to this world."""
        path = Path(self.cfg.calibration)
        ver = json.loads(path.read_text())["verdicts"] if path.exists() else {}
        usable, unusable, missing = [], [], {}
        for m in VERDICT_METRICS:
            if m == "unseen_dist" and not self.axis.has_backs:
                missing[m] = (
                    f"world version {self.world.version} has no discrete back classes (the"
                    " models were trained on it); unseen_dist needs world version 2"
                )
            elif m not in ver:
                unusable.append(f"{m} (no calibration at {path})")
            elif not ver[m]["passes"]:
                unusable.append(f"{m} (fails its calibration)")
            else:
                usable.append(m)
        return usable, unusable, missing

    def verdicts(self, rows, pers, metrics: list[str]) -> list[dict]:
        out, pairs = [], {}

        def paired(a: tuple, b: tuple) -> dict:  # every metric of one pair, computed once
            if (a, b) not in pairs:
                pairs[(a, b)] = self.axis.paired(pers[a], pers[b])
            return pairs[(a, b)]

        for steps in sorted({r["steps"] for r in rows}):
            cand = [
                r
                for r in rows
                if r["steps"] == steps and r["method"] not in ("teacher", "finetune")
            ]
            if len(cand) < 2:
                continue
            for m in metrics:
                higher = VERDICT_METRICS[m]
                ranked = sorted(cand, key=lambda r: r[m], reverse=higher)
                best = ranked[0]
                kb = (best["model"], best["sampler"], steps)
                diffs = []
                for r in ranked[1:]:
                    p = paired(kb, (r["model"], r["sampler"], steps))
                    diffs.append((r["model"], p[m + "_diff"], p[m + "_diff_ci95"]))
                tied = [best["model"]] + [n for n, d, h in diffs if not excludes_zero(d, h)]
                out.append(
                    {
                        "steps": steps,
                        "metric": m,
                        "best": best["model"],
                        "runner_up": diffs[0][0],
                        "diff": diffs[0][1],
                        "ci95": diffs[0][2],
                        "best_resolved": excludes_zero(diffs[0][1], diffs[0][2]),
                        "tied": tied,
                    }
                )
        return out

    def write(self, rows: list[dict], pers: dict) -> None:
        usable, unusable, missing = self.usable_metrics()
        if self.lpips is None:
            missing["lpips"] = self.lpips_missing
        meta = {
            "commit": git_commit(),
            "config": asdict(self.cfg),
            "device": device_name(self.device),
            "objects": len(self.seeds),
            "eval_set": f"{self.cfg.split} split objects 0..{len(self.seeds) - 1}",
            "split": self.cfg.split,
            "world_version": self.world.version,
            "world_note": (
                "Back classes are drawn from a known distribution: unseen_dist applies."
                if self.axis.has_backs
                else "The models' own world: backs drawn freely, so unseen_dist does not apply"
                " (see Missing metrics)."
            ),
            "reference": f"teacher@{self.cfg.reference_steps} (euler)",
            "hashes": self.hashes,
            "verdict_metrics": usable,
            "unusable_metrics": unusable,
            "missing": missing,
            "skipped": self.skipped,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        meta["sharpness_usable"] = sharpness_calibrated(self.cfg.calibration)
        meta["verdicts"] = self.verdicts(rows, pers, usable)
        (self.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        with open(self.out / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        pareto_plot(rows, self.out / "pareto.png")
        (self.out / "report.md").write_text(report(rows, meta))
        print(results_table(rows))
        print(f"wrote {self.out / 'results.json'}, results.csv, pareto.png, report.md")


def sharpness_calibrated(path: str) -> bool:
    """Whether the calibration at ``path`` passes the sharpness metric (blur and grain)."""
    p = Path(path)
    if not p.exists():
        return False
    return bool(json.loads(p.read_text())["verdicts"].get("sharpness", {}).get("passes", False))


def _train_seconds(model) -> float:
    """A student's whole measured training cost (preparation included: ``train_cost.wall_s``);
    cards made before it was recorded give their loop time only."""
    card = getattr(model, "card", None)
    if card is not None:
        cost = card.train_cost or {}
        if "wall_s" in cost:
            return float(cost["wall_s"])
        return float(card.train_config.get("train_seconds", 0.0))
    return 0.0
