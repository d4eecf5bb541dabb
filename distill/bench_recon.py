"""`distill bench recon`: each reconstructor's forward pass at its own rig size (views of its
image size from the lab world at its rig), median after warm-up, CUDA synchronised on GPU; and
the full-size LGM 'big' architecture with random weights ("lgm-big") so its cost is known
without the download. Also counts the forward's FLOPs (torch's flop counter)."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from eval.timing import call_flops

LGM_BIG = "lgm-big"  # the full-size LGM architecture, random weights, nothing downloaded


def _load(name: str):
    from recon.io import load_reconstructor
    from recon.lgm import LGMReconstructor, lgm_config

    if name == LGM_BIG:
        torch.manual_seed(0)
        return LGMReconstructor(lgm_config("big")).eval()
    return load_reconstructor(name)


def _inputs(recon, batch: int, device: torch.device):
    from scenes.model_views import recon_world
    from scenes.rig import make_rig

    rig = make_rig(recon_world(recon))
    n, s = len(recon.rig.azimuths), recon.rig.image_size
    views = torch.rand(batch, n, 3, s, s, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return views.to(device), rig.target_viewmats.to(device), rig.Ks(n).to(device)


def _flops(recon, views, vm, Ks) -> float:
    return call_flops(lambda: recon(views[:1], vm, Ks))


def bench_one(name: str, device: torch.device, repeats: int, batch: int = 1) -> dict:
    """Median forward seconds of one reconstructor (folder or ``lgm-big``) at batch ``batch``."""
    recon = _load(name).to(device)
    views, vm, Ks = _inputs(recon, batch, device)
    cuda = device.type == "cuda"

    def once() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            g = recon(views, vm, Ks)
        if cuda:
            torch.cuda.synchronize()
        once.count = g.count
        return time.perf_counter() - t0

    once()  # warm-up
    times = [once() for _ in range(repeats)]
    params = sum(p.numel() for p in recon.parameters())
    row = {
        "reconstructor": name,
        "kind": recon.kind,
        "image_size": recon.rig.image_size,
        "views": len(recon.rig.azimuths),
        "gaussians": once.count,
        "parameters": params,
        "batch": batch,
        "median_s": statistics.median(times),
        "times_s": times,
        "gflops": _flops(recon, views, vm, Ks) / 1e9,
    }
    if cuda:
        row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def bench_recon(names: list[str], out: str | Path, repeats: int = 3, device: str = "auto"):
    """Time each reconstructor; print a table and save JSON."""
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    rows = []
    for name in names:
        r = bench_one(name, dev, repeats)
        rows.append(r)
        print(
            f"{name}: {r['kind']} {r['views']} x {r['image_size']}px -> {r['gaussians']} "
            f"Gaussians, {r['parameters'] / 1e6:.1f} M params, {r['gflops']:.1f} GFLOP, "
            f"{r['median_s'] * 1000:.1f} ms (median of {repeats})",
            flush=True,
        )
    cpu = platform.processor() or platform.machine()
    where = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu ({cpu}, {torch.get_num_threads()} threads)"
    )
    report = {"device": where, "torch": torch.__version__, "repeats": repeats, "cases": rows}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", help=f"reconstructor folders, or {LGM_BIG}")
    ap.add_argument("--out", default="runs/bench/recon.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    bench_recon(a.names, a.out, a.repeats, a.device)
