"""The step sweep: for each model (teacher, students) x sampler x step count, image -> views ->
Gaussians on one fixed evaluation set, measured on the quality axis (eval/quality.py) with
intervals over objects, with cost (eval/timing.py), verdicts (eval/verdicts.py), a Pareto plot
(eval/plot.py) and a report (eval/report.py), written by eval/results.py.

Every cell uses the same test objects and the same per-object noise seeds. Finished cells are
cached under ``<out>/cells`` (eval/cells.py) keyed by the weight hashes of teacher, student,
reconstructor and encoder, the sampling configuration and the evaluation set, so an interrupted
sweep resumes and a stale cell is never reused.

Under ``accelerate launch`` each process generates and measures its share of the objects
(eval/shards.py); the main process gathers the per-object figures, computes every interval and
verdict, times the cells alone at batch 1 (the others wait at a barrier) and writes every file.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from eval.budget_axis import load_budget_axis
from eval.cells import (
    AXIS_VERSION,
    Cell,
    CellCache,
    cell_key,
    folder_hash,
    grid,
    seeds_hash,
    train_seconds,
)
from eval.encoder import FeatureEncoder
from eval.margins import load_margins
from eval.metrics import load_lpips, psnr
from eval.quality import QualityAxis, Truth
from eval.recon_eval import render_images
from eval.results import write_results
from eval.shards import Shards, merge_figures
from eval.stats import mean_ci
from eval.timing import (
    batch_cost,
    cell_latencies,
    device_name,
    git_commit,
    network_key,
    pinned_threads,
)
from eval.verdicts import reference_verdicts, sharpness_calibrated, usable_metrics, verdicts
from recon.io import load_reconstructor
from samplers.protocol import folder_key
from scenes.data import DATA_ROOT
from scenes.model_views import check_views_fit, models_world, recon_world
from scenes.world import target_views, world_id
from students.folder import LoadedStudent
from students.sampling import sample_views
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
    calibration: str = "docs/metrics/calibration.json"  # which metrics may decide verdicts
    # equivalence margins per metric, fixed before the sweep ("" or no file: intervals only)
    margins: str = "docs/metrics/margins.json"
    # quality against distillation compute (val) for the amortised table's budget axis, used
    # only when measured on this sweep's teacher and world ("": none)
    budget_curves: str = "docs/methods/budget_curves.json"
    data_root: str = DATA_ROOT
    split: str = "test"  # test: the final report; val: choosing recipes and checkpoints
    objects: int = 256  # objects in the evaluation set
    batch: int = 32  # objects per generation batch
    set_resamples: int = 1000  # subsets per FID/KID/unseen-distance interval (>= 1000 to report)
    # timed rounds at batch 1 after a warm-up round, every cell once per round (interleaved):
    # median and interquartile range per stage; >= 20 for the reported sweep
    latency_repeats: int = 20
    threads: int = 1  # torch threads while timing (0: torch's default), recorded in results.json
    throughput_batch: int = 16
    reference_steps: int = 50  # teacher steps of the reference every row is paired against
    skip_unsupported: bool = False  # skip (with the reason) instead of failing
    merge_lora: bool = True  # LoRA students sample with adapters merged (as served)
    device: str = "auto"  # auto | cpu | cuda


class Sweep:
    """Loads the models and the evaluation set, runs (or finds cached) every cell, writes."""

    def __init__(self, cfg: SweepConfig):
        self.cfg = cfg
        dev = cfg.device
        self.shards = Shards()  # this process among the sweep's processes
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
        )
        if self.shards.count > 1 and dev == "auto":
            self.device = self.shards.device  # each process on its own device
        self.out = Path(cfg.out)
        self.cache = CellCache(self.out / "cells")
        self.margins = load_margins(cfg.margins)  # read before any cell runs: fixed in advance
        self.teacher = load_teacher(cfg.teacher).to(self.device)
        # the lab's reconstructor or an LGM folder: one interface (recon/base.py)
        self.recon = load_reconstructor(cfg.recon).to(self.device).eval()
        self.encoder = FeatureEncoder.from_pretrained(cfg.encoder)
        world = recon_world(self.recon)  # its training world, or the world at its rig
        self.recon_world = world  # the rig every model's views must be
        self.models, self.skipped = self._load_models()
        if self.recon.rig.image_size != self.teacher.info.image_size:
            raise ValueError(
                f"reconstructor {cfg.recon} works at {self.recon.rig.image_size}px, teacher "
                f"{cfg.teacher} at {self.teacher.info.image_size}px"
            )
        # one world: the one the models were trained on (every model must share it), not the
        # reconstructor's; made in data_root if missing, data of another world refused
        named = {f"teacher {cfg.teacher}": self.teacher}
        named |= {f"student {k}": m for k, m in self.models.items() if m is not self.teacher}
        self.eval_world = models_world(named)
        with self.shards.main_first():  # the main process makes missing data, the rest read it
            ds = self.eval_world.open(cfg.data_root, cfg.split, cfg.objects)
        if target_views(ds.world) != self.recon.rig.views:
            raise ValueError(
                f"{cfg.data_root}: {cfg.split} views rendered at (azimuth, elevation) "
                f"{target_views(ds.world)}, but the reconstructor takes "
                f"{self.recon.rig.describe()}; point data_root at data made at its rig"
            )
        b = ds.batch(list(range(cfg.objects)))
        self.world = ds.world
        self.rig = ds.rig
        # margins derived on another world do not decide equivalence here: intervals only, said
        self.margins_missing = "no margins file: intervals only"
        why = self.margins.world_mismatch(ds.world) if self.margins is not None else None
        if why is not None:
            tqdm.write(f"margins not used: {why}")
            self.margins, self.margins_missing = None, f"{why}; intervals only"
        self.truth = Truth.from_batch(b, ds.rig, ds.world.version)
        self.cond = b["cond"]
        self.seeds = [int(s) for s in b["seeds"]]
        self.lpips, self.lpips_missing = load_lpips()  # once per sweep
        self.axis = QualityAxis(
            self.truth,
            self.recon,
            self.encoder,
            cfg.batch,
            self.device,
            self.lpips,
            cfg.set_resamples,
        )
        self.shards.split(cfg.objects, cfg.batch)
        self.my_axis = self.axis.share(self.shards.lo, self.shards.hi)  # this process's objects
        self.hashes = {
            "teacher": self.teacher.weights_key(),
            "recon": self.recon.weights_key(),  # the lab's: its model.safetensors hash
            "encoder": folder_hash(cfg.encoder, "model.safetensors"),
            "world": world_id(ds.world),
            "split": cfg.split,
            "seeds": seeds_hash(self.seeds),
            "axis": AXIS_VERSION,
            "set_resamples": cfg.set_resamples,
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
                st = LoadedStudent.from_pretrained(
                    m, teacher=self.teacher, merge=self.cfg.merge_lora
                )
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
        cfg = self.cfg
        return cell_key(self.hashes, model, sampler, steps, cfg.teacher_guidance, cfg.batch)

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
        return render_images(
            g, viewmats.to(self.device), self.rig.K.to(self.device), self.rig.size
        ).cpu()

    def run_cell(self, name: str, model, sampler: str, steps: int, reference: Tensor | None):
        """The cell's summary row, its per-object figures (for paired comparisons) and views on
        the main process (None elsewhere), and this process's share of the views; ``reference``:
        the reference cell's views of this process's share."""
        sh, per, mine, nfe = self.shards, {}, None, 0
        with torch.inference_mode():
            if sh.hi > sh.lo:
                mine, nfe = self._generate(
                    model, sampler, steps, sh.mine(self.cond), sh.mine(self.seeds)
                )
                per = self.my_axis.evaluate(mine)
                if reference is not None:
                    per["teacher_psnr"] = psnr(mine, reference).mean(1)
        parts = sh.gather((per, None if mine is None else mine.half(), nfe))
        if parts is None:
            return None, None, None, mine
        if sh.count == 1:
            views = mine
        else:
            views = torch.cat([v for _, v, _ in parts if v is not None])
            per, nfe = merge_figures([f for f, _, _ in parts]), parts[0][2]
        row = {
            "model": name,
            "method": model.method,
            "sampler": sampler,
            "steps": steps,
            "nfe": nfe,
            **self.axis.summary(per),
        }
        if "teacher_psnr" in per:
            row["teacher_psnr"], row["teacher_psnr_ci95"] = mean_ci(per["teacher_psnr"])
        return row, per, views, mine

    def _pipe(self, model, sampler: str, steps: int) -> tuple:
        """(setup, generate, reconstruct, render) of a cell for eval/timing.py; ``setup`` puts a
        student on the step count's weights, untimed (None for a teacher)."""

        def setup():
            model.use_steps(steps)

        def generate(c: Tensor, s: list[int]) -> Tensor:
            return self._generate(model, sampler, steps, c, s)[0]

        def render(g):
            return self._render(g, self.rig.heldout_viewmats)

        return (setup if hasattr(model, "use_steps") else None), generate, self._reconstruct, render

    def time_cells(self, cells: list[Cell], rows: list[dict]) -> None:
        """Every cell's cost into its row, measured now and never cached (timings from another
        run or load are not comparable): stage latencies at batch 1 interleaved across cells
        (eval/timing.py), then throughput at a batch and memory, with torch's threads pinned."""
        pipes = {(n, a, k): self._pipe(m, a, k) for n, m, a, k in cells}
        cfg = self.cfg
        with pinned_threads(cfg.threads):
            lat = cell_latencies(pipes, self.cond, self.seeds, self.device, cfg.latency_repeats)
            bar = tqdm(list(zip(cells, rows)), desc="throughput and memory", unit="cell")
            for (name, model, sampler, steps), row in bar:
                setup, gen, rec, _ = pipes[(name, sampler, steps)]
                if setup is not None:
                    setup()
                row.update(lat[(name, sampler, steps)])
                row["network"] = network_key(model)
                row.update(
                    batch_cost(gen, rec, self.cond, self.seeds, cfg.throughput_batch, self.device)
                )

    # --- the grid -------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        cfg = self.cfg
        out, skipped = grid(self.models, cfg.samplers, cfg.steps, cfg.skip_unsupported)
        self.skipped += skipped
        return out

    def _cached(self, name, model, sampler, steps, reference, ref_per=None):
        """(row, per-object figures, this process's share of the views) of a cell from its
        keyed cache, else computed (row and figures then on the main process only), with its
        paired differences to the reference cell (``ref_per``; none given: this cell is the
        reference, paired with itself) stored in the row."""
        key = self.cell_key(model, sampler, steps)
        found = self.cache.load(name, sampler, steps, key)
        if found is not None:
            row, per, views = found
            return row, per, self.shards.mine(views)
        row, per, views, mine = self.run_cell(name, model, sampler, steps, reference)
        if row is not None:
            row["cell_key"] = key
            row["train_seconds"] = train_seconds(model)
            against = per if ref_per is None else ref_per
            row.update({"vs_ref_" + k: v for k, v in self.axis.paired(per, against).items()})
            self.cache.save(name, sampler, steps, key, row, per, views)
        self.shards.wait()  # the cell is on disk before any process looks for the next one
        return row, per, mine

    def run(self) -> list[dict]:
        cells = self.cells()
        (self.out / "cells").mkdir(parents=True, exist_ok=True)
        ref_steps = self.cfg.reference_steps
        _, ref_per, ref_views = self._cached("teacher", self.teacher, "euler", ref_steps, None)
        ref_views = None if ref_views is None else ref_views.float()  # an empty share: None
        rows, pers, main = [], {}, self.shards.is_main
        for name, model, sampler, steps in tqdm(
            cells, desc="sweep cells", unit="cell", disable=not main
        ):
            row, per, _ = self._cached(name, model, sampler, steps, ref_views, ref_per)
            rows.append(row)
            pers[(name, sampler, steps)] = per
        if main:  # latency at batch 1 by the main process alone, then the files
            self.time_cells(cells, rows)
            self.write(rows, pers)
        self.shards.wait()
        return rows if main else []

    # --- the outputs ------------------------------------------------------------------------
    def write(self, rows: list[dict], pers: dict) -> None:
        usable, unusable, missing = usable_metrics(
            self.cfg.calibration, self.axis.has_backs, self.world.version, self.world
        )
        if self.lpips is None:
            missing["lpips"] = self.lpips_missing
        meta = self._meta(usable, unusable, missing)
        meta["sharpness_usable"] = sharpness_calibrated(self.cfg.calibration, self.world)
        mg = self.margins
        meta["margins"] = (
            mg.describe()
            if mg is not None
            else {"path": self.cfg.margins, "missing": self.margins_missing}
        )
        values, n = (mg.values if mg is not None else None), len(self.seeds)
        meta["verdicts"] = verdicts(rows, pers, usable, self.axis.paired, values, n)
        compared = usable + (["sharpness"] if meta["sharpness_usable"] else [])
        meta["reference_verdicts"] = reference_verdicts(rows, compared, values, n)
        meta["budget_axis"] = load_budget_axis(
            self.cfg.budget_curves, folder_key(self.cfg.teacher), self.world.version
        )
        write_results(self.out, rows, meta)

    def _meta(self, usable: list[str], unusable: list[str], missing: dict) -> dict:
        """What results.json records about the sweep besides its rows."""
        return {
            "commit": git_commit(),
            "config": asdict(self.cfg),
            "device": device_name(self.device),
            "objects": len(self.seeds),
            "processes": self.shards.count,  # that generated and measured the objects
            "eval_set": f"{self.cfg.split} split objects 0..{len(self.seeds) - 1}",
            "split": self.cfg.split,
            "world_version": self.world.version,
            "world_id": self.hashes["world"],
            "world_source": self.eval_world.describe(),
            "world_note": (
                "Back classes are drawn from a known distribution: unseen_dist applies."
                + (
                    " In version 2 the back also shows in the condition image (it is painted"
                    " by half-space, not by what the condition camera sees), so unseen-side"
                    " figures partly measure the input, and a model that reads it leaks (see"
                    " Unseen side); version 3 hides it."
                    if self.world.version == 2
                    else ""
                )
                if self.axis.has_backs
                else "The models' own world: backs drawn freely, so unseen_dist does not apply"
                " (see Missing metrics)."
            ),
            "reference": f"teacher@{self.cfg.reference_steps} (euler)",
            "timing": {
                "repeats": self.cfg.latency_repeats,
                "warmup_rounds": 1,
                "threads": self.cfg.threads,
                "order": "cells interleaved (round-robin: each round times every cell's"
                " diffusion, recon and render once)",
            },
            "seen_views": self.axis.seen_views,
            "back_views": (
                self.axis.back_shown.double().mean(0).tolist() if self.axis.has_backs else []
            ),
            "hashes": self.hashes,
            "verdict_metrics": usable,
            "unusable_metrics": unusable,
            "missing": missing,
            "skipped": self.skipped,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
