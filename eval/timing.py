"""Latency: median of repeated runs after warm-up, CUDA-synchronised on a GPU."""

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
