"""`distill bench render`: the tile rasterizer against the dense reference, in the same run.

Each case renders a world object (its real opacity structure) into the 4 target cameras and
back-propagates a fixed random image loss. The dense reference is the straightforward one: one
camera at a time, every pixel against every Gaussian, vectorised in torch. Each timing runs in a
fresh child process so that its peak memory (max RSS) is its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

CASES = [(4096, 4, 32), (16384, 4, 64)]


def _run(kind: str, gaussians: int, size: int, repeats: int, forward_only: bool, q) -> None:
    from recon.raster import rasterize, rasterize_dense
    from scenes.objects import make_object
    from scenes.rig import make_rig
    from scenes.world import WorldConfig

    torch.manual_seed(0)
    cfg = WorldConfig(gaussians=gaussians, image_size=size)
    g0, rig = make_object(7, cfg), make_rig(cfg)
    vm = rig.target_viewmats
    K = rig.K.expand(vm.shape[0], 3, 3)
    w = torch.rand(vm.shape[0], size, size, 3)
    bg = torch.ones(3)

    def once() -> None:
        g = g0.map(lambda t: t.clone().requires_grad_(not forward_only))
        ctx = torch.inference_mode() if forward_only else torch.enable_grad()
        with ctx:
            if kind == "tiled":
                rgb, _, _ = rasterize(g, vm, K, size, size, bg)
                if not forward_only:
                    (rgb * w).sum().backward()
            else:
                for i in range(vm.shape[0]):
                    rgb, _, _ = rasterize_dense(g, vm[i], K[i], size, size, bg)
                    if not forward_only:
                        (rgb * w[i]).sum().backward()

    once()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put({"median_s": statistics.median(times), "times_s": times, "peak_mb": peak_mb})


def _child(*args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def bench_render(out: str | Path, repeats: int = 3, cases=None) -> list[dict]:
    """Time forward and forward+backward of both rasterizers per case; print and save JSON."""
    rows = []
    for gaussians, cams, size in cases or CASES:
        assert cams == 4, "cases use the rig's 4 target cameras"
        r = {"gaussians": gaussians, "cameras": cams, "size": size}
        for kind in ("tiled", "dense"):
            fb = _child(kind, gaussians, size, repeats, False)
            fw = _child(kind, gaussians, size, repeats, True)
            r[f"{kind}_s"] = fb["median_s"]
            r[f"{kind}_fwd_s"] = fw["median_s"]
            r[f"{kind}_peak_mb"] = fb["peak_mb"]
        r["speedup"] = r["dense_s"] / r["tiled_s"]
        r["speedup_fwd"] = r["dense_fwd_s"] / r["tiled_fwd_s"]
        r["peak_mb"] = r["tiled_peak_mb"]
        rows.append(r)
        print(
            f"{gaussians:>6} G x {cams} cams x {size}x{size}: fwd+bwd dense {r['dense_s']:.3f} s, "
            f"tiled {r['tiled_s']:.3f} s -> {r['speedup']:.1f}x | fwd {r['speedup_fwd']:.1f}x | "
            f"peak {r['tiled_peak_mb']:.0f} MB (dense {r['dense_peak_mb']:.0f} MB)",
            flush=True,
        )
    report = {
        "device": f"cpu ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "repeats": repeats,
        "cases": rows,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(_table(rows))
    print(f"wrote {out}")
    return rows


def _table(rows: list[dict]) -> str:
    head = "| gaussians | cameras | size | dense_s | tiled_s | speedup | fwd speedup | peak_mb |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['gaussians']} | {r['cameras']} | {r['size']} | {r['dense_s']:.3f} | "
            f"{r['tiled_s']:.3f} | {r['speedup']:.1f} | {r['speedup_fwd']:.1f} | "
            f"{r['peak_mb']:.0f} |"
        )
    return "\n".join(lines)
