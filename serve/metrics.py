"""The service's Prometheus metrics, on a registry of its own (prometheus_client escapes labels).

Labels only ever take values from closed sets: a student label is a known student name or
``"unknown"``, a route label is a route template, a status is an HTTP status code. Whatever a
client sends can therefore neither forge a sample nor grow the page.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

UNKNOWN = "unknown"  # the label of a student name that is not one the server knows
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    """Request counts by student and status, responses by route and status, errors by kind,
    stage latency histograms, batches, swaps and the active student."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "distill_requests", "Generate requests by student and HTTP status.",
            ["student", "status"], registry=r,
        )  # fmt: skip
        self.responses = Counter(
            "distill_http_responses", "Every HTTP response by route and status.",
            ["route", "status"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "distill_errors", "Rejected or failed requests by kind.", ["kind"], registry=r
        )
        self.stage = Histogram(
            "distill_stage_seconds", "Latency per stage.", ["stage"],
            buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.batches = Counter("distill_batches", "Batches run on the compute thread.", registry=r)
        self.batched = Counter(
            "distill_batched_requests", "Requests run inside those batches.", registry=r
        )
        self.retried = Counter(
            "distill_batch_retries", "Batches that failed and were rerun one job at a time.",
            registry=r,
        )  # fmt: skip
        self.swaps = Counter("distill_swaps", "Student activations that took effect.", registry=r)
        self.active = Gauge(
            "distill_active_student", "1 for the student new requests go to.", ["student"],
            registry=r,
        )  # fmt: skip
        self._active = ""

    def request(self, student: str, status: int) -> None:
        """Count a generate request; ``student`` must already be a known name or UNKNOWN."""
        self.requests.labels(student=student, status=str(status)).inc()

    def response(self, route: str, status: int) -> None:
        self.responses.labels(route=route, status=str(status)).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def observe(self, stage: str, ms: float) -> None:
        self.stage.labels(stage=stage).observe(ms / 1000)

    def set_active(self, name: str) -> None:
        if self._active:
            self.active.labels(student=self._active).set(0)
        self.active.labels(student=name).set(1)
        self._active = name

    def text(self) -> bytes:
        return generate_latest(self.registry)
