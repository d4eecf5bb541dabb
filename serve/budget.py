"""A latency budget instead of a step count: the best (student, steps) that fits.

The candidates are the sweep's Pareto front over (latency a user waits for, quality): a row is
on it when no other row is at least as fast and at least as good, and strictly one of the two.
The latency is image -> views -> Gaussians (diffusion + reconstruction; rendering evaluation
views is not part of serving). At request time each candidate's expected latency is its own
latency (this server's recent measurement of it where there is one, else the sweep's) times
one plus the batches queued ahead of it; the best-quality candidate whose expected latency fits
the budget is served, else the fastest one, and the answer says which and why.
"""

from __future__ import annotations

from dataclasses import dataclass

LOWER_IS_BETTER = {"fid", "kid", "chamfer", "unseen_dist", "averaged_rate", "lpips"}


@dataclass(frozen=True)
class Option:
    student: str  # served name ("teacher" for the teacher)
    steps: int
    latency_ms: float  # the sweep's diffusion + reconstruction, batch 1
    quality: float  # the sweep's value of the quality key


def serving_ms(row: dict) -> float | None:
    """What a user of the service waits for in a sweep row: diffusion + reconstruction."""
    if row.get("diffusion_ms") is None or row.get("recon_ms") is None:
        return None
    return float(row["diffusion_ms"]) + float(row["recon_ms"])


def front(rows: list[dict], quality: str, names: list[str], sampler: str = "euler") -> list[Option]:
    """The Pareto front of the sweep rows of servable models, fastest first."""
    lower = quality in LOWER_IS_BETTER
    opts = []
    for r in rows:
        name = "teacher" if r.get("method") == "teacher" else r.get("model")
        if name not in names or r.get(quality) is None or serving_ms(r) is None:
            continue
        if name == "teacher" and r.get("sampler") != sampler:
            continue
        q = float(r[quality])
        opts.append(Option(name, int(r["steps"]), serving_ms(r), -q if lower else q))

    def dominated(o: Option) -> bool:
        return any(
            p.latency_ms <= o.latency_ms
            and p.quality >= o.quality
            and (p.latency_ms < o.latency_ms or p.quality > o.quality)
            for p in opts
        )

    keep = sorted((o for o in opts if not dominated(o)), key=lambda o: o.latency_ms)
    return [
        Option(o.student, o.steps, o.latency_ms, -o.quality if lower else o.quality) for o in keep
    ]


def pick(
    options: list[Option],
    budget_ms: float,
    batches_ahead: int,
    observed_ms: dict[tuple[str, int], float],
    quality: str,
) -> tuple[Option, dict]:
    """The best option whose expected latency fits ``budget_ms``, and the reasons for the answer."""
    if not options:
        raise LookupError("no servable (student, steps) on the sweep's Pareto front")
    lower = quality in LOWER_IS_BETTER

    def expected(o: Option) -> tuple[float, float, str]:
        own = observed_ms.get((o.student, o.steps))
        base, source = (own, "this server") if own is not None else (o.latency_ms, "the sweep")
        return base * (1 + batches_ahead), base, source

    fits = [o for o in options if expected(o)[0] <= budget_ms]
    if fits:
        best = min(fits, key=lambda o: o.quality) if lower else max(fits, key=lambda o: o.quality)
        why = (
            f"best {quality} on the sweep's Pareto front whose expected latency fits "
            f"{budget_ms:g} ms"
        )
    else:
        best = min(options, key=lambda o: expected(o)[0])
        why = f"nothing on the Pareto front fits {budget_ms:g} ms; serving the fastest"
    exp, base, source = expected(best)
    return best, {
        "reason": why,
        "budget_ms": budget_ms,
        "expected_ms": round(exp, 1),
        "measured_ms": round(base, 1),
        "measured_by": source,
        "batches_ahead": batches_ahead,
        "quality": {quality: best.quality},
        "candidates": len(options),
        "fitting": len(fits),
    }
