"""Latency: median of repeated runs after warm-up, CUDA-synchronised on a GPU, and the stage costs
of one image -> views -> Gaussians pipeline (a sweep cell).

A sweep times its cells interleaved (``interleaved_times``: round-robin over every cell's stages,
one call each per round), so a change in machine load falls on every cell alike instead of on
whichever cell ran during it, with torch's threads pinned (``pinned_threads``); each stage gets
its median and interquartile range (``spread``). The same network at the same step count must
then time alike across models (eval/timing_report.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Hashable

import torch
from tqdm import tqdm


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


def call_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one ``fn()`` call, by torch's flop counter (inference mode)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


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


STAGES = ("diffusion", "recon", "render")  # a cell's timed stages, in call order


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) by linear interpolation between the sorted values
    (numpy's default; ``statistics.quantiles(method="inclusive")``); one value is all three."""
    if not xs:
        raise ValueError("no timings to summarise")
    if len(xs) == 1:
        v = float(xs[0])
        return v, v, v
    q1, q2, q3 = statistics.quantiles([float(x) for x in xs], n=4, method="inclusive")
    return q1, q2, q3


def spread(name: str, xs: list[float]) -> dict:
    """``name``: the median of ``xs``; ``name_iqr``: the interquartile range; ``name_q1`` and
    ``name_q3``: its ends."""
    q1, med, q3 = quartiles(xs)
    return {name: med, f"{name}_iqr": q3 - q1, f"{name}_q1": q1, f"{name}_q3": q3}


@contextlib.contextmanager
def pinned_threads(n: int):
    """torch's intra-op threads set to ``n`` inside the block (0: left as they are). On a shared
    2-core CPU, 2 threads while another process keeps a core busy made a teacher call ~20x
    slower than 1 thread (1.75 s against 77 ms)."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


Call = Callable[[], object] | tuple[Callable[[], object], Callable[[], object]]


def interleaved_times(
    calls: dict[Hashable, Call],
    repeats: int,
    device="cpu",
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[Hashable, list[float]]:
    """Wall times in ms of each call over ``repeats`` rounds after ``warmup`` untimed rounds;
    every round calls each one once, in the dict's order (round-robin), so no call's repeats run
    in a row. A call is ``fn`` or ``(setup, fn)``: ``setup`` runs untimed right before (a
    student's switch to the step count's weights, say)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    pairs = {k: c if isinstance(c, tuple) else (None, c) for k, c in calls.items()}
    times: dict[Hashable, list[float]] = {k: [] for k in pairs}
    rounds = tqdm(range(warmup + repeats), desc="latency rounds", unit="round", leave=False)
    with torch.inference_mode():
        for r in rounds:
            for k, (setup, fn) in pairs.items():
                if setup is not None:
                    setup()
                sync(device)
                t0 = clock()
                fn()
                sync(device)
                if r >= warmup:
                    times[k].append((clock() - t0) * 1000)
    return times


def network_key(model) -> str:
    """Which network a model runs when it samples: a hash of the parameter names and shapes of
    the module that computes its output (a LoRA student's merged copy where it samples merged;
    a student's ``net.`` prefix dropped, so a student that is the teacher's network plus nothing
    hashes as the teacher). Equal keys: the same computation per network pass."""
    runner = model.runner() if hasattr(model, "runner") else model
    items = sorted((n.removeprefix("net."), list(p.shape)) for n, p in runner.named_parameters())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:12]


def cell_latencies(
    pipes: dict[Hashable, tuple],
    cond: torch.Tensor,
    seeds: list[int],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
) -> dict[Hashable, dict]:
    """Stage latencies at batch 1 of every cell, measured interleaved: ``pipes`` maps a cell to
    ``(setup, generate, reconstruct, render)`` (``setup``: untimed, before each generate call,
    or None). Per cell: median, IQR and quartiles of each stage; ``total_ms`` is what a user
    waits for (diffusion + recon medians), its spread from the per-round sums."""
    c1, s1 = cond[:1].to(device), seeds[:1]
    calls: dict[Hashable, Call] = {}
    with torch.inference_mode():
        for cell, (setup, generate, reconstruct, render) in pipes.items():
            if setup is not None:
                setup()
            views = generate(c1, s1)
            g = reconstruct(views)
            gen = (
                (lambda f=generate: f(c1, s1))
                if setup is None
                else (setup, lambda f=generate: f(c1, s1))
            )
            calls[(cell, "diffusion")] = gen
            calls[(cell, "recon")] = lambda f=reconstruct, v=views: f(v)
            calls[(cell, "render")] = lambda f=render, x=g: f(x)
    times = interleaved_times(calls, repeats, device, warmup)
    out = {}
    for cell in pipes:
        d, r, n = (times[(cell, s)] for s in STAGES)
        row = {**spread("diffusion_ms", d), **spread("recon_ms", r), **spread("render_ms", n)}
        tot = spread("total_ms", [a + b for a, b in zip(d, r)])
        tot["total_ms"] = row["diffusion_ms"] + row["recon_ms"]
        out[cell] = {**row, **tot, "latency_repeats": repeats}
    return out


def batch_cost(
    generate: Callable[[torch.Tensor, list[int]], torch.Tensor],
    reconstruct: Callable[[torch.Tensor], object],
    cond: torch.Tensor,
    seeds: list[int],
    batch: int,
    device: torch.device,
) -> dict:
    """Throughput of image -> views -> Gaussians at ``batch`` (one run after a warm-up) and the
    peak memory of that run."""
    cb, sb = cond[:batch].to(device), seeds[:batch]

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
        "throughput_per_s": cb.shape[0] / dt,
        "throughput_batch": int(cb.shape[0]),
        "peak_mem_mb": mem if mem is not None else (rss.peak - rss.base) / 2**20,
        "peak_mem_kind": "cuda max allocated"
        if mem is not None
        else "cpu resident set growth during the batch run",
        "device": device_name(device),
    }
