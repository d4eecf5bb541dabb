"""Latency: median of repeated runs after warm-up, CUDA-synchronised on a GPU, and the stage costs
of one image -> views -> Gaussians pipeline (a sweep cell)."""

from __future__ import annotations

import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device="cpu", warmup: int = 2, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs after ``warmup``."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def device_name(device: torch.device | str) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(d)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device | str) -> float | None:
    """Peak accelerator memory since the last reset (CUDA); None on CPU (see the RSS instead)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return None


class RssPeak:
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


def git_commit() -> str:
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


def pipeline_cost(
    generate: Callable[[torch.Tensor, list[int]], torch.Tensor],
    reconstruct: Callable[[torch.Tensor], object],
    render: Callable[[object], object],
    cond: torch.Tensor,
    seeds: list[int],
    batch: int,
    device: torch.device,
    repeats: int,
) -> dict:
    """Stage latencies at batch 1 (median after warm-up), throughput at ``batch``, memory.
    ``generate(cond, seeds)`` gives views, ``reconstruct(views)`` Gaussians, ``render(g)``
    the evaluation views."""
    c1, s1 = cond[:1].to(device), seeds[:1]
    views = generate(c1, s1)
    g = reconstruct(views)
    diff = time_ms(lambda: generate(c1, s1), device, repeats=repeats)
    rec = time_ms(lambda: reconstruct(views), device, repeats=repeats)
    ren = time_ms(lambda: render(g), device, repeats=repeats)
    cb = cond[:batch].to(device)
    sb = seeds[:batch]

    def pipeline():
        reconstruct(generate(cb, sb))

    with torch.inference_mode():
        pipeline()  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        with RssPeak() as rss:
            t0 = time.perf_counter()
            pipeline()
            sync(device)
            dt = time.perf_counter() - t0
    mem = peak_memory_mb(device)
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
        "device": device_name(device),
    }
