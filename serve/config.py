"""What `distill serve` is told: the students, limits, batching, budgets and the admin token."""

from __future__ import annotations

from dataclasses import dataclass

TOKEN_ENV = "DISTILL_ADMIN_TOKEN"


@dataclass
class ServeConfig:
    students: str = "shipped/students"  # a folder of student folders (new ones can be added)
    reconstructor: str = "shipped/recon"
    teacher: str = ""  # teacher folder for students (default: each card's teacher_dir)
    serve_teacher: bool = True  # also serve the teacher itself, as "teacher"
    default: str = ""  # the first active student (default: the first one found)
    max_batch: int = 8  # requests batched together (same student and steps)
    max_wait_ms: float = 10.0  # how long a batch waits to fill
    max_body_bytes: int = 4 * 2**20  # larger request bodies get 413 (read no further)
    max_image_pixels: int = 2048 * 2048  # larger images get 422, judged from the header alone
    body_timeout_s: float = 30.0  # a body that stalls this long gets 408
    header_timeout_s: float = 10.0  # a connection whose request headers take longer is closed
    max_connections: int = 64  # concurrent connections before 503
    decode_threads: int = 2  # image decoding and resizing, off the event loop
    resize: bool = True  # resize condition images of another size (else 422)
    sweep: str = "docs/sweep/results.json"  # sweep results: /v1/students and latency budgets
    latency_ms: float = 0.0  # default latency budget for requests naming no student/steps (0: off)
    budget_quality: str = "fid"  # the sweep column a latency budget maximises (fid: lower wins)
    merge_lora: bool = True  # LoRA students run with their adapters merged (private copy)
    preload_front: bool = True  # load the sweep's Pareto-front students at start, for budgets
    admin_token: str = ""  # bearer token for admin routes (default: $DISTILL_ADMIN_TOKEN)
    device: str = "auto"
    # torch.compile (with channels-last weights) for every loaded pipeline; the budget picker and
    # the batcher then learn the compiled path's latency (serve/budget.py LatencyModel)
    compile: bool = False
