"""`distill bench scale`: how cost grows with image size and batch (issue 29 item 3).

Stages: one teacher step (a network call), one student step (the shipped shortcut student's
network: the teacher's with its second time input, LoRA merged as served), the reconstructor,
the rasterizer (the reconstructor's V*H*W pixel-aligned Gaussians rendered to the held-out
cameras) and the whole 1-step pipeline (noise -> one student call -> reconstructor). Every
network is untrained, of the shipped architecture (shipped/teacher/teacher.json,
shipped/recon/recon.json) with only its image size changed.

Each (stage, size, batch) runs in its own subprocess, so its peak memory is its own: on the CPU
the process's peak resident set over the calls (``VmHWM``, reset through
``/proc/self/clear_refs`` once the networks and inputs are built) less its resident set at that
moment, i.e. what the calls add at their peak (a lower bound of their working memory: heap
pages freed earlier and still resident are reused without growing it; tracemalloc does not see
torch's allocations; where ``/proc`` cannot be reset, the growth of ``ru_maxrss``, which stays
0 when building the networks peaked higher than the calls); on CUDA
``torch.cuda.max_memory_allocated``.
Rows are appended to ``<out>.partial.jsonl`` as they are measured, so a killed run resumes.
Time: median of ``repeats`` calls after one warm-up call. Per stage and batch, the exponent k of
time ~ pixels^k is the least-squares slope on log-log over the sizes.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

STAGES = ("teacher_step", "student_step", "recon", "raster", "pipeline_1step")
SIZES = (32, 64, 128, 256)
BATCHES = (1, 8, 32)
ROOT = Path(__file__).resolve().parents[1]


def _config(record: str) -> dict:
    return json.loads((ROOT / record).read_text())["config"]


def build(stage: str, size: int, device: torch.device) -> dict:
    """Untrained networks of the shipped architectures at ``size`` px that ``stage`` needs."""
    from recon.model import ReconConfig, Reconstructor
    from students.module import Student, StudentConfig
    from teachers.lab import LabTeacher, LabTeacherConfig

    torch.manual_seed(0)
    nets = {}
    rc = _config("shipped/recon/recon.json")  # every stage: the rasterizer renders its output
    nets["recon"] = Reconstructor(ReconConfig(**{**rc, "image_size": size})).to(device).eval()
    if stage in ("teacher_step", "student_step", "pipeline_1step"):
        tc = _config("shipped/teacher/teacher.json")
        teacher = LabTeacher(LabTeacherConfig(**{**tc, "image_size": size})).to(device).eval()
        nets["teacher"] = teacher
        if stage != "teacher_step":
            nets["student"] = Student(teacher, StudentConfig(second_time=True)).to(device).eval()
    return nets


def stage_call(stage: str, size: int, batch: int, device: torch.device):
    """A no-argument function that runs ``stage`` once on fixed inputs."""
    from eval.recon_eval import render_images
    from scenes.rig import make_rig
    from scenes.world import WorldConfig

    nets = build(stage, size, device)
    rig = make_rig(WorldConfig(image_size=size))
    recon = nets["recon"]
    vm = rig.target_viewmats.to(device)
    K = rig.K.expand(len(vm), 3, 3).to(device)
    g = torch.Generator().manual_seed(0)
    views = (torch.rand(batch, len(vm), 3, size, size, generator=g) * 2 - 1).to(device)
    cond = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)
    t = torch.ones(batch, device=device)
    if stage == "recon":
        return lambda: recon(views, vm, K)
    if stage == "raster":
        with torch.inference_mode():
            gs = recon(views, vm, K)
        held = rig.heldout_viewmats.to(device)
        return lambda: render_images(gs, held, rig.K.to(device), size)
    net = nets["student" if stage != "teacher_step" else "teacher"]
    x = torch.randn(batch, *nets["teacher"].noise_shape(), generator=g).to(device)
    s = torch.zeros(batch, device=device)
    if stage == "teacher_step":
        return lambda: net(x, t, cond)
    if stage == "student_step":
        return lambda: net(x, t, cond, s=s)
    v = len(vm)

    def pipeline():  # one student step from noise (x0 prediction), then the reconstructor
        out = net(x, t, cond, s=s)
        return recon(out.reshape(batch, v, 3, size, size).clamp(-1, 1), vm, K)

    return pipeline


def _proc_kb(path: str, field: str) -> int | None:
    """A ``field:`` line's value in kB from a /proc file (None off Linux or when absent)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (None off Linux)."""
    return _proc_kb("/proc/self/status", field)


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (``VmHWM``) to its current one (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_one(stage: str, size: int, batch: int, repeats: int, device: str) -> dict:
    """One configuration's median seconds and peak memory (run in a fresh process)."""
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    fn = stage_call(stage, size, batch, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = dev.type == "cpu" and reset_peak_rss()
    rss_kb = _status_kb("VmRSS") if hwm else None
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):  # the first call warms up
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            if i:
                times.append(time.perf_counter() - t0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_kb = _status_kb("VmHWM") if hwm else None
    row = {
        "stage": stage,
        "size": size,
        "batch": batch,
        "pixels": size * size,
        "median_s": sorted(times)[len(times) // 2],
        "times_s": times,
        "device": dev.type,
    }
    if dev.type == "cuda":
        row["peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        row["memory"] = "torch.cuda.max_memory_allocated"
    elif hwm_kb is not None and rss_kb is not None:
        # the kernel's RSS counters are cached per thread (a few hundred kB of slack): a call
        # that adds nothing can read slightly below zero
        row["peak_mb"] = max(0.0, (hwm_kb - rss_kb) / 1024)
        row["process_peak_mb"] = hwm_kb / 1024
        row["memory"] = "peak resident set over the calls less the resident set before them"
    else:
        row["peak_mb"] = (peak_kb - base_kb) / 1024
        row["process_peak_mb"] = peak_kb / 1024
        row["memory"] = "ru_maxrss growth over the calls (fresh process per configuration)"
    return row


def exponent(rows: list[dict]) -> float | None:
    """k in time ~ pixels^k: least-squares slope of log time on log pixels."""
    pts = [(math.log(r["pixels"]), math.log(r["median_s"])) for r in rows if r["median_s"] > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else None


def memory_total_bytes() -> int | None:
    """This machine's memory (``MemTotal``; None off Linux)."""
    kb = _proc_kb("/proc/meminfo", "MemTotal")
    return None if kb is None else kb * 1024


def _run_one(
    stage: str,
    size: int,
    batch: int,
    repeats: int,
    device: str,
    timeout: float,
    max_bytes: int | None = None,
) -> dict:
    """``measure_one`` in a fresh subprocess; a failure (out of memory, time out) is recorded.
    ``max_bytes`` caps the subprocess's address space, so a configuration that needs more than
    the machine has fails with the allocator's error instead of driving it into the OOM killer."""
    cmd = [sys.executable, "-m", "distill.bench_scale", stage, str(size), str(batch)]
    cmd += [str(repeats), device]

    def cap() -> None:
        if max_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))

    try:
        r = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout, preexec_fn=cap
        )
    except subprocess.TimeoutExpired:
        return {"stage": stage, "size": size, "batch": batch, "error": f"over {timeout:.0f} s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        err = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return {"stage": stage, "size": size, "batch": batch, "error": err}
    return json.loads(lines[-1])


def predicted_over(rows: list[dict], stage: str, size: int, batch: int, budget_s: float):
    """Why (stage, size, batch) need not run, from the rows measured so far: a smaller
    configuration of the stage (no larger in size or batch) failed, or its time scaled up
    linearly in pixels and batch, a lower bound here (every stage's measured exponent is >= 1),
    exceeds ``budget_s``. None: run it."""
    for r in rows:
        if r["stage"] != stage or (r["size"], r["batch"]) == (size, batch):
            continue
        if r["size"] > size or r["batch"] > batch:
            continue
        if "error" in r:
            return f"skipped: {r['size']} px at batch {r['batch']} failed ({r['error'][:60]})"
        est = r["median_s"] * (size / r["size"]) ** 2 * (batch / r["batch"])
        if est > budget_s:
            return (
                f"skipped: predicted over {budget_s:.0f} s ({est:.0f} s per call, linear"
                f" from {r['size']} px at batch {r['batch']})"
            )
    return None


def exponents(rows: list[dict]) -> dict:
    """Per stage and batch: k of time ~ pixels^k over the measured sizes."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["stage"], {}).setdefault(str(r["batch"]), [])
    for stage, per in out.items():
        for b in per:
            ok = [
                r for r in rows if r["stage"] == stage and str(r["batch"]) == b and "error" not in r
            ]
            per[b] = exponent(ok)
    return out


def _gb(max_bytes: int | None) -> str:
    return "no cap" if not max_bytes else f"address space capped at {max_bytes / 2**30:.0f} GiB"


def _markdown(rows: list[dict], ks: dict, meta: dict) -> str:
    sizes = sorted({r["size"] for r in rows})
    lines = [
        "# How cost grows with image size and batch (`distill bench scale`)",
        "",
        f"Device: {meta['device']}; {meta['repeats']} timed calls after a warm-up (median);"
        f" memory: {meta['memory']}. Untrained networks of the shipped architectures. Each"
        f" configuration in its own process, at most {meta.get('timeout_s', 1800):.0f} s"
        f" ({_gb(meta.get('max_bytes'))}); one whose time, scaled linearly from a smaller"
        " configuration, would exceed its share of that is not run (`not run`). k: the slope of"
        " log time on log pixels over every measured size; k, top: over the two largest.",
        "",
        "| stage | batch | " + " | ".join(f"{s} px s (MB)" for s in sizes) + " | k | k, top |",
        "|---|---|" + "---|" * len(sizes) + "---|---|",
    ]
    for stage in ks:
        for b, k in ks[stage].items():
            cells = []
            for s in sizes:
                r = next(
                    (r for r in rows if (r["stage"], str(r["batch"]), r["size"]) == (stage, b, s)),
                    None,
                )
                if r is None:
                    cells.append("")
                elif r.get("error", "").startswith("skipped: "):
                    cells.append("not run: " + r["error"].removeprefix("skipped: ").split(" (")[0])
                elif "allocate memory" in r.get("error", ""):
                    cells.append(f"failed: out of memory ({_gb(meta.get('max_bytes'))})")
                elif "error" in r:
                    cells.append(f"failed: {r['error'][:48]}")
                else:
                    cells.append(f"{r['median_s']:.4g} ({r['peak_mb']:.0f})")
            kk = "n/a" if k is None else f"{k:.2f}"
            ok = sorted(
                (r["size"], r)
                for r in rows
                if (r["stage"], str(r["batch"])) == (stage, b) and "error" not in r
            )
            top = exponent([r for _, r in ok[-2:]]) if len(ok) >= 2 else None
            kt = "n/a" if top is None else f"{top:.2f} ({ok[-2][0]}-{ok[-1][0]} px)"
            lines.append(f"| {stage} | {b} | " + " | ".join(cells) + f" | {kk} | {kt} |")
    lines += [
        "",
        "Largest share of a served one-step request (one student step, then the reconstructor),"
        " and whether rendering the reconstructor's"
        " Gaussians to the held-out views (evaluation, turntables; not on the request path)"
        " costs more than the request:",
        "",
    ]
    for (s, b), (name, share, raster) in dominant(rows).items():
        extra = "" if raster is None else f"; rendering {raster:.1f}x the request"
        what = f"{name} ({100 * share:.0f}% of the two)"
        if share < 0.55:  # 3 timed calls each: a few percent is noise, not a ranking
            what = f"student step and reconstructor about equal ({name} {100 * share:.0f}%)"
        lines.append(f"- {s} px, batch {b}: {what}{extra}")
    return "\n".join(lines) + "\n"


def dominant(rows: list[dict]) -> dict:
    """(size, batch) -> (the costlier of student step and reconstructor, its share of their
    sum, the rasterizer's time over that sum or None where it was not measured)."""
    ok = {(r["stage"], r["size"], r["batch"]): r["median_s"] for r in rows if "error" not in r}
    out = {}
    for s in sorted({r["size"] for r in rows}):
        for b in sorted({r["batch"] for r in rows}):
            st, rc = ok.get(("student_step", s, b)), ok.get(("recon", s, b))
            if st is None or rc is None:
                continue
            name, top = ("student step", st) if st >= rc else ("reconstructor", rc)
            ras = ok.get(("raster", s, b))
            out[(s, b)] = (name, top / (st + rc), None if ras is None else ras / (st + rc))
    return out


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, b in zip(axes[0], batches):
        for stage in STAGES:
            pts = sorted(
                (r["pixels"], r["median_s"])
                for r in rows
                if r["stage"] == stage and r["batch"] == b and "error" not in r
            )
            if pts:
                ax.loglog(*zip(*pts), marker="o", label=stage)
        ax.set(title=f"batch {b}", xlabel="pixels per view", ylabel="seconds")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bench_scale(
    out: str = "docs/bench/scale",
    sizes=SIZES,
    batches=BATCHES,
    stages=STAGES,
    repeats: int = 3,
    device: str = "auto",
    timeout: float = 1800.0,
    max_bytes: int | None = None,
) -> dict:
    """Every (stage, size, batch) in its own process (at most ``timeout`` seconds and, on the
    CPU, ``max_bytes`` of address space each: default this machine's memory); writes
    ``out``.{json,md,png}. Measured rows of a killed run with the same settings are read back
    from ``out``.partial.jsonl; failed ones are tried again."""
    if max_bytes is None and device != "cuda":
        max_bytes = memory_total_bytes()
    for st in stages:
        if st not in STAGES:
            raise ValueError(f"unknown stage {st!r}; stages: {', '.join(STAGES)}")
    base = Path(out)
    base.parent.mkdir(parents=True, exist_ok=True)
    partial = base.with_suffix(".partial.jsonl")
    done = {}  # a killed run's rows, measured with the same settings
    if partial.exists():
        for line in partial.read_text().splitlines():
            r = json.loads(line)
            same = (r.get("repeats"), r.get("device_asked")) == (repeats, device)
            if same and "error" not in r:
                done[(r["stage"], r["size"], r["batch"])] = r
    todo = [(st, sz, b) for sz in sizes for b in batches for st in stages]
    per_call = timeout / (repeats + 1)  # the warm-up and the timed calls share the timeout
    rows = []
    for i, (stage, size, batch) in enumerate(todo, 1):
        r = done.get((stage, size, batch))
        why = None if r is not None else predicted_over(rows, stage, size, batch, per_call)
        if why is not None:
            r = {"stage": stage, "size": size, "batch": batch, "error": why}
        elif r is None:
            r = _run_one(stage, size, batch, repeats, device, timeout, max_bytes)
            r.update(repeats=repeats, device_asked=device)
            with partial.open("a") as f:
                f.write(json.dumps(r) + "\n")
        keep = ("stage", "size", "batch", "median_s", "peak_mb", "error")
        shown = json.dumps({k: r.get(k) for k in keep})
        print(f"[{i}/{len(todo)}]{' (resumed)' if (stage, size, batch) in done else ''} {shown}")
        sys.stdout.flush()
        rows.append(r)
    ok = [r for r in rows if "error" not in r]
    meta = {
        "device": ok[0]["device"] if ok else device,
        "repeats": repeats,
        "timeout_s": timeout,
        "max_bytes": max_bytes,
        "memory": ok[0]["memory"] if ok else "",
        "threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    ks = exponents(rows)
    result = {"meta": meta, "exponents": ks, "rows": rows}
    base.with_suffix(".json").write_text(json.dumps(result, indent=2))
    base.with_suffix(".md").write_text(_markdown(rows, ks, meta))
    _plot(rows, base.with_suffix(".png"))
    partial.unlink(missing_ok=True)
    print(f"wrote {base}.json, .md, .png")
    return result


def rewrite(out: str = "docs/bench/scale") -> None:
    """Rewrite ``out``.md and .png from ``out``.json (no configuration is measured again)."""
    base = Path(out)
    res = json.loads(base.with_suffix(".json").read_text())
    base.with_suffix(".md").write_text(_markdown(res["rows"], res["exponents"], res["meta"]))
    _plot(res["rows"], base.with_suffix(".png"))


if __name__ == "__main__":  # one configuration: STAGE SIZE BATCH REPEATS DEVICE
    a = sys.argv[1:]
    print(json.dumps(measure_one(a[0], int(a[1]), int(a[2]), int(a[3]), a[4])))
