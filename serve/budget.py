"""A latency budget instead of a step count: the best (student, steps) that fits.

The candidates are the sweep's Pareto front over (latency a user waits for, quality): a row is
on it when no other row is at least as fast and at least as good, and strictly one of the two.
The sweep's latency is image -> views -> Gaussians (diffusion + reconstruction; rendering
evaluation views is not part of serving).

At request time a candidate's expected latency is (``LatencyModel``):
    queue wait  = requests queued or running x this server's compute time per request
  + service     = the candidate's sweep latency x how this server's batches compare with the
                  sweep's (measured over every batch; 1 before the first; batching and load
                  raise it for all candidates alike, so candidates rank as in the sweep)
  + overhead    = this server's time per request outside the compute (decoding, encoding, I/O)
The best-quality candidate whose expected latency fits the budget is served, else the best of
those within 10% of the fastest, and the answer says which and why. All figures are moving
averages of what the server measured.
"""

from __future__ import annotations

from dataclasses import dataclass

NEAR_FASTEST = 1.10  # when nothing fits: options within 10% of the fastest count as equally fast
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


class LatencyModel:
    """Moving averages of this server's timings, to predict a request's latency now."""

    def __init__(self, alpha: float = 0.3):
        self.alpha = alpha
        self.per_request = None  # compute ms per request, over all batches
        self.ratio = None  # this server's batch ms / the sweep's ms for the same candidate
        self.overhead = 0.0  # ms per request outside queue and compute

    def _avg(self, old, new):
        return new if old is None else (1 - self.alpha) * old + self.alpha * new

    def ran(self, ms: float, n: int, sweep_ms: float | None) -> None:
        """A batch of ``n`` requests took ``ms`` of compute; the sweep puts one at ``sweep_ms``."""
        self.per_request = self._avg(self.per_request, ms / max(n, 1))
        if sweep_ms:
            self.ratio = self._avg(self.ratio, ms / sweep_ms)

    def finished(self, outside_ms: float) -> None:
        """A request spent ``outside_ms`` in the server outside its queue wait and compute."""
        self.overhead = self._avg(self.overhead, max(outside_ms, 0.0))

    def expected(self, o: Option, pending: int) -> dict:
        ratio = 1.0 if self.ratio is None else self.ratio
        service = o.latency_ms * ratio
        wait = pending * (self.per_request if self.per_request is not None else service)
        return {
            "expected_ms": wait + service + self.overhead,
            "queue_ms": wait,
            "service_ms": service,
            "overhead_ms": self.overhead,
            "sweep_ms": o.latency_ms,
            "server_vs_sweep": ratio,
            "queued_requests": pending,
        }


def pick(
    options: list[Option], budget_ms: float, pending: int, model: LatencyModel, quality: str
) -> tuple[Option, dict]:
    """The best option whose expected latency fits ``budget_ms``, and the reasons for the answer."""
    if not options:
        raise LookupError("no servable (student, steps) on the sweep's Pareto front")
    lower = quality in LOWER_IS_BETTER
    est = {o: model.expected(o, pending) for o in options}
    fits = [o for o in options if est[o]["expected_ms"] <= budget_ms]
    if fits:
        best = min(fits, key=lambda o: o.quality) if lower else max(fits, key=lambda o: o.quality)
        why = (
            f"best {quality} on the sweep's Pareto front whose expected latency fits "
            f"{budget_ms:g} ms"
        )
    else:  # the best of those about as fast as the fastest (sweep latencies carry noise)
        fastest = min(est[o]["expected_ms"] for o in options)
        near = [o for o in options if est[o]["expected_ms"] <= fastest * NEAR_FASTEST]
        best = min(near, key=lambda o: o.quality) if lower else max(near, key=lambda o: o.quality)
        why = (
            f"nothing on the Pareto front fits {budget_ms:g} ms; serving the best of the "
            f"fastest (within {NEAR_FASTEST - 1:.0%} of the fastest)"
        )
    parts = {k: round(v, 1) if isinstance(v, float) else v for k, v in est[best].items()}
    return best, {
        "reason": why,
        "budget_ms": budget_ms,
        **parts,
        "quality": {quality: best.quality},
        "candidates": len(options),
        "fitting": len(fits),
    }
