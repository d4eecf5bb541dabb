"""The HTTP service: image -> views + 3D Gaussians, with students swapped in while traffic flows.

- Students live in the registry (serve/registry.py): loaded off the request path and swapped
  atomically; a request holds the pipeline it started with until it finishes, so a swap never
  fails one. Overlapping activations take effect in the order they were asked for: one that
  finishes after a newer one already took effect is answered 409 (superseded) and changes nothing.
  The registry raises its own exceptions; ``STATUS`` below maps each to its status code.
- Requests for the same student and step count are batched (serve/batching.py).
- ``latency_ms`` (per request, or ``latency_ms`` in the config as the default) serves the best
  (student, steps) on the sweep's Pareto front that fits the budget (serve/budget.py).
- Bad input gets an answer that names the problem, never a traceback, and never fails another
  request: 422 (invalid parameters or image), 413 (body over the limit, also when streamed),
  415 (content type), 408 (stalled body), 404 (unknown student), 409 (student not loaded).
- ``GET /`` is a page to try it in a browser (serve/page.py), with the two routes it needs
  beyond the API: ``POST /v1/turntable`` (frames around a PLY) and ``GET /v1/sweep``.
- Admin routes (activate) need ``Authorization: Bearer <token>`` when a token is configured
  (``admin_token`` or the environment variable ``DISTILL_ADMIN_TOKEN``); without one the server
  only binds loopback addresses, so only local clients can reach them.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response

from serve import budget
from serve.batching import Batcher
from serve.config import ServeConfig
from serve.metrics import ServeMetrics
from serve.page import add_page
from serve.pipeline import Pipeline, decode_image
from serve.registry import (
    BudgetAndChoice,
    LoadFailed,
    NoBudget,
    NotAuthorized,
    NotLoaded,
    Registry,
    RegistryError,
    Superseded,
    UnknownStudent,
    UnsupportedSteps,
)
from serve.request import Guard, parse_json_body, parse_params, public_message

RAW_TYPES = ("", "image/png", "image/jpeg", "application/octet-stream")

# The one table from the registry's refusals to HTTP: status code, and extra headers.
STATUS: dict[type[RegistryError], int] = {
    UnknownStudent: 404,
    NotLoaded: 409,
    Superseded: 409,
    NoBudget: 409,
    UnsupportedSteps: 422,
    LoadFailed: 422,
    BudgetAndChoice: 422,
    NotAuthorized: 401,
}
HEADERS: dict[type[RegistryError], dict[str, str]] = {NotAuthorized: {"WWW-Authenticate": "Bearer"}}


def status_of(e: HTTPException | RegistryError) -> int:
    return e.status_code if isinstance(e, HTTPException) else STATUS[type(e)]


class Server:
    """The registry of students, with the batcher, the latency model and the decode threads."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = ServeMetrics()
        self.latency = budget.LatencyModel()
        self.batcher = Batcher(cfg.max_batch, cfg.max_wait_ms, self.metrics, self._batch_ran)
        self.decoder = ThreadPoolExecutor(cfg.decode_threads, thread_name_prefix="decode")
        self.registry = Registry(cfg, self.metrics)
        self.started = time.time()

    def choose(self, student: str | None, steps: int | None, latency_ms: float | None):
        """(pipeline, steps, why) for a request: by name and steps, or by a latency budget."""
        pending = self.batcher.pending
        return self.registry.choose(student, steps, latency_ms, pending, self.latency)

    def _batch_ran(self, key: tuple[str, int], ms: float, n: int) -> None:
        front = self.registry.front
        sweep_ms = next((o.latency_ms for o in front if (o.student, o.steps) == key), None)
        self.latency.ran(ms, n, sweep_ms)

    def decode(self, data: bytes, size: int) -> torch.Tensor:
        """Bytes -> a [3, size, size] condition image (run on the decode threads)."""
        image = decode_image(data, self.cfg.max_image_pixels)
        if not self.cfg.resize and image.shape[-2:] != (size, size):
            raise ValueError(
                f"image must be {size}x{size}, got {image.shape[-1]}x{image.shape[-2]} "
                "(resizing is off)"
            )
        return Pipeline.resize(image[None], size)[0]


def create_app(cfg: ServeConfig) -> FastAPI:
    server = Server(cfg)
    students = server.registry
    app = FastAPI(title="distill-lab serving", version="0.2.0")
    app.state.server = server
    app.add_middleware(
        Guard,
        max_body_bytes=cfg.max_body_bytes,
        body_timeout_s=cfg.body_timeout_s,
        on_response=server.metrics.response,
        on_error=server.metrics.error,
    )

    @app.exception_handler(RegistryError)
    async def refused(request: Request, e: RegistryError):
        headers = HEADERS.get(type(e))
        return await http_exception_handler(request, HTTPException(status_of(e), str(e), headers))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        server.metrics.error("internal")
        return JSONResponse({"detail": f"internal error: {type(e).__name__}"}, status_code=500)

    @app.get("/healthz")
    async def healthz():
        uptime = time.time() - server.started
        return {"status": "ok", "active": students.active, "uptime_s": uptime}

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.text(), media_type=server.metrics.content_type)

    @app.get("/v1/students")
    async def list_students():
        return {"active": students.active, "students": students.describe()}

    @app.post("/v1/students/{name}/activate")
    async def activate(name: str, request: Request):
        students.check_admin(request.headers.get("authorization", ""))
        pipe = await students.activate(name)
        return {"active": name, "weights": pipe.weights, "method": pipe.method, "steps": pipe.steps}

    @app.post("/v1/generate")
    async def generate(request: Request):
        return await _generate(server, request)

    add_page(app, server)  # GET / (the page), /static, /v1/turntable, /v1/sweep
    return app


async def _generate(server: Server, request: Request) -> Response:
    """POST /v1/generate: views and Gaussians for one condition image, counted in the metrics."""
    t0 = time.perf_counter()
    label = server.registry.active
    try:
        data, params = await _read(request)
        label = params.student or label
        pipe, steps, picked = server.choose(params.student, params.steps, params.latency_ms)
        label = pipe.name
        cond = await _decode(server, data, pipe.image_size)
        seed = params.seed
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)))
        try:
            res = await server.batcher.submit(pipe, steps, cond, seed)
        except Exception as e:  # noqa: BLE001  (this request's own failure, after a retry alone)
            server.metrics.error("internal")
            raise HTTPException(
                500, f"generation failed: {type(e).__name__}: {public_message(e)}"
            ) from None
    except (HTTPException, RegistryError) as e:
        server.metrics.request(server.registry.label(label), status_of(e))
        raise
    total = (time.perf_counter() - t0) * 1000
    res["timings_ms"]["total"] = total
    out = {"student": pipe.name, "method": pipe.method, "weights": pipe.weights}
    out |= {"steps": steps, "seed": seed, **res}
    if picked is not None:
        out["picked"] = picked
    body = json.dumps(out)
    done = (time.perf_counter() - t0) * 1000  # with the answer serialised
    server.metrics.observe("total", done)
    server.metrics.observe("queue", res["timings_ms"]["queue"])
    server.metrics.request(pipe.name, 200)
    server.latency.finished(done - res["timings_ms"]["queue"] - res["timings_ms"]["compute"])
    return Response(body, media_type="application/json")


async def _decode(server: Server, data: bytes, size: int) -> torch.Tensor:
    """The condition image, decoded on the decode threads; 422 naming what is wrong with it."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(server.decoder, server.decode, data, size)
    except ValueError as e:
        server.metrics.error("bad_image")
        raise HTTPException(422, f"bad image: {e}") from None


async def _read(request: Request):
    """The image bytes and the validated parameters of a generate request."""
    text = dict(request.query_params)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    typed = None
    if ctype == "multipart/form-data":
        form = await request.form()
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "multipart body needs a file field named 'image'")
        data = await upload.read()
        for k, v in form.multi_items():
            if k != "image":
                text[k] = v if isinstance(v, str) else "<file>"
    elif ctype == "application/json":
        data, typed = parse_json_body(await request.body())
    elif ctype in RAW_TYPES:
        data = await request.body()
    else:
        raise HTTPException(
            415,
            f"content type {ctype!r} not accepted: send image/png, image/jpeg, "
            "multipart/form-data (field 'image') or application/json ('image_b64')",
        )
    params = parse_params(text, typed)
    if not data:
        raise HTTPException(422, "no image in the request")
    return data, params
