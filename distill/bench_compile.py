"""`distill bench compile`: the one-step pipeline (image -> student step -> Gaussians) eager
against ``torch.compile`` with channels-last weights (serve/pipeline.py ``Pipeline.compile``),
in the same run: median ms per batch size over interleaved rounds (eval/timing.py), the
eager/compiled ratio, the first compiled call's time (compilation), and the largest difference
of their outputs (views and Gaussians), which must stay within float tolerance."""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import fields
from pathlib import Path

import torch

from eval.timing import interleaved_times

TOLERANCE = 1e-3  # largest |compiled - eager| accepted on views in [-1, 1] and Gaussians


def max_diff(a, b) -> float:
    """The largest |a - b| over two pipeline outputs' views and Gaussian fields."""
    (va, ga, _), (vb, gb, _) = a, b
    pairs = [(va, vb)] + [(getattr(ga, f.name), getattr(gb, f.name)) for f in fields(ga)]
    return float(max((x.float() - y.float()).abs().max() for x, y in pairs))


def compare(eager, compiled, batches: list[int], repeats: int, steps: int) -> list[dict]:
    """Per batch size: eager and compiled medians, their ratio and the output difference."""
    rows = []
    size = eager.image_size
    for b in batches:
        cond = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(b)) * 2 - 1
        seeds = list(range(b))
        t0 = time.perf_counter()
        out_c = compiled(cond, steps=steps, seed=seeds)  # compiles at this batch size
        first_s = time.perf_counter() - t0
        out_e = eager(cond, steps=steps, seed=seeds)
        calls = {
            name: (lambda p=pipe, c=cond, sd=seeds: p(c, steps=steps, seed=sd))
            for name, pipe in (("eager", eager), ("compiled", compiled))
        }
        times = interleaved_times(calls, repeats, eager.device)
        me, mc = statistics.median(times["eager"]), statistics.median(times["compiled"])
        diff = max_diff(out_e, out_c)
        rows.append(
            {
                "batch": b,
                "eager_ms": me,
                "compiled_ms": mc,
                "speedup": me / mc,
                "first_compiled_call_s": first_s,
                "max_abs_diff": diff,
                "equal_within_tolerance": diff <= TOLERANCE,
                "eager_times_ms": times["eager"],
                "compiled_times_ms": times["compiled"],
            }
        )
        keys = ("batch", "eager_ms", "compiled_ms", "speedup", "max_abs_diff")
        print(json.dumps({k: rows[-1][k] for k in keys}), flush=True)
    return rows


def bench_compile(
    student: str,
    recon: str,
    out: str,
    batches: list[int],
    repeats: int = 20,
    device: str = "cpu",
    channels_last: bool = True,
) -> dict:
    """Eager vs compiled one-step pipeline of ``student`` through ``recon``; writes ``out``."""
    from serve.pipeline import Pipeline

    eager = Pipeline.from_pretrained(student, recon, device=device)
    compiled = Pipeline.from_pretrained(student, recon, device=device)
    compiled.compile(channels_last=channels_last)
    steps = eager.default_steps
    rows = compare(eager, compiled, batches, repeats, steps)
    result = {
        "student": student,
        "recon": recon,
        "steps": steps,
        "device": eager.device.type,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "channels_last": channels_last,
        "tolerance": TOLERANCE,
        "repeats": repeats,
        "rows": rows,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result
