"""The HTTP service: image -> views + 3D Gaussians, with students swapped in while traffic flows.

- Students load off the request path (in a loader thread) and the active pointer is swapped
  atomically; a request holds the pipeline it started with until it finishes, so a swap never
  fails one. Overlapping activations take effect in the order they were asked for: one that
  finishes after a newer one already took effect is answered 409 (superseded) and changes nothing.
- Requests for the same student and step count are batched (serve/batching.py).
- ``latency_ms`` (per request, or ``latency_ms`` in the config as the default) serves the best
  (student, steps) on the sweep's Pareto front that fits the budget (serve/budget.py).
- Bad input gets an answer that names the problem, never a traceback, and never fails another
  request: 422 (invalid parameters or image), 413 (body over the limit, also when streamed),
  415 (content type), 408 (stalled body), 404 (unknown student), 409 (student not loaded).
- Admin routes (activate) need ``Authorization: Bearer <token>`` when a token is configured
  (``admin_token`` or the environment variable ``DISTILL_ADMIN_TOKEN``); without one the server
  only binds loopback addresses, so only local clients can reach them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from serve import budget
from serve.batching import Batcher
from serve.metrics import UNKNOWN, ServeMetrics
from serve.pipeline import TEACHER_STEPS, Pipeline, decode_image
from serve.request import Guard, parse_json_body, parse_params, public_message

TOKEN_ENV = "DISTILL_ADMIN_TOKEN"
RAW_TYPES = ("", "image/png", "image/jpeg", "application/octet-stream")


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


class Server:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = ServeMetrics()
        self.latency = budget.LatencyModel()
        self.batcher = Batcher(cfg.max_batch, cfg.max_wait_ms, self.metrics, self._batch_ran)
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")
        self.decoder = ThreadPoolExecutor(cfg.decode_threads, thread_name_prefix="decode")
        self.lock = threading.Lock()
        self.pipelines: dict[str, Pipeline] = {}
        self.teacher = None
        self.token = cfg.admin_token or os.environ.get(TOKEN_ENV, "")
        self.tickets = self.applied = 0  # activation requests asked / the newest that took effect
        self._warned: set[str] = set()
        self.sweep = self._sweep_rows()
        names = self.known()
        first = cfg.default or (names[0] if names else "")
        if not first:
            raise FileNotFoundError(f"no readable student folders under {cfg.students}")
        if first not in names:
            raise FileNotFoundError(self._unknown(first))
        self.active = first
        self.pipelines[first] = self._load(first)
        self.metrics.set_active(first)
        self.front = budget.front(self.sweep, cfg.budget_quality, names)
        if cfg.preload_front:
            for o in self.front:
                if o.student not in self.pipelines:
                    self.pipelines[o.student] = self._load(o.student)
        self.started = time.time()

    # --- students ---------------------------------------------------------------------------
    def cards(self) -> tuple[dict[str, dict], dict[str, str]]:
        """Readable student cards by name, and the unreadable ones with the reason (warned once)."""
        root = Path(self.cfg.students)
        good, broken = {}, {}
        if not root.is_dir():
            return good, broken
        for p in sorted(root.iterdir()):
            f = p / "student.json"
            if not f.exists():
                continue
            try:
                card = json.loads(f.read_text())
                if not isinstance(card, dict) or "teacher_dir" not in card:
                    raise ValueError("not a student card (no 'teacher_dir')")
                good[p.name] = card
            except (OSError, ValueError, UnicodeDecodeError) as e:
                broken[p.name] = f"unreadable {p.name}/student.json: {public_message(e)}"
                if str(f) not in self._warned:
                    self._warned.add(str(f))
                    print(
                        f"warning: skipping student {p.name}: cannot read {f}: {e}", file=sys.stderr
                    )
        return good, broken

    def available(self) -> list[str]:
        return list(self.cards()[0])

    def known(self) -> list[str]:
        """Every name a request may ask for: readable students, and the teacher if served."""
        return self.available() + (["teacher"] if self.cfg.serve_teacher else [])

    def label(self, name: str) -> str:
        """A metrics label for a name a client sent: the name if the server knows it."""
        return name if name in self.pipelines or name in self.known() else UNKNOWN

    def _unknown(self, name: str) -> str:
        return f"unknown student {name!r}; available: {self.known()}"

    def _teacher_dir(self, cards: dict[str, dict] | None = None) -> str:
        """The teacher folder: the config's, else the first readable card's (``cards``: the
        readable cards when the caller has just read them)."""
        if self.cfg.teacher:
            return self.cfg.teacher
        for card in (self.cards()[0] if cards is None else cards).values():
            return card["teacher_dir"]
        return "shipped/teacher"

    def _load(self, name: str) -> Pipeline:
        """Load a student (or the teacher) and warm it up; raises on a broken folder."""
        from teachers.io import load_teacher

        teacher_dir = self._teacher_dir()
        if self.teacher is None:
            self.teacher = load_teacher(teacher_dir)
        folder = Path(teacher_dir) if name == "teacher" else Path(self.cfg.students) / name
        pipe = Pipeline.from_pretrained(
            folder,
            self.cfg.reconstructor,
            device=self.cfg.device,
            teacher=self.teacher if name != "teacher" else None,
            merge_lora=self.cfg.merge_lora,
        )
        pipe.name = name
        size = pipe.image_size
        pipe(torch.zeros(1, 3, size, size), steps=pipe.default_steps, seed=0)  # warm-up
        return pipe

    def get(self, name: str | None) -> Pipeline:
        with self.lock:
            name = name or self.active
            pipe = self.pipelines.get(name)
        if pipe is None:
            if name not in self.known():
                raise HTTPException(404, self._unknown(name))
            raise HTTPException(
                409,
                f"student {name!r} is not loaded; activate it first "
                f"(POST /v1/students/{name}/activate)",
            )
        return pipe

    async def activate(self, name: str) -> Pipeline:
        if name not in self.known():
            raise HTTPException(404, self._unknown(name))
        with self.lock:
            self.tickets += 1
            ticket = self.tickets
            pipe = self.pipelines.get(name)
        if pipe is None:
            loop = asyncio.get_running_loop()
            try:
                pipe = await loop.run_in_executor(self.loader, self._load, name)
            except Exception as e:  # noqa: BLE001  (a broken folder: keep serving the active one)
                self.metrics.error("activate")
                raise HTTPException(
                    422, f"cannot load student {name!r}: {public_message(e)}"
                ) from None
        with self.lock:
            self.pipelines[name] = pipe
            if ticket < self.applied:
                raise HTTPException(
                    409,
                    f"activation of {name!r} superseded by a newer activation "
                    f"({self.active!r} is active); {name!r} stays loaded but inactive",
                )
            self.applied, self.active = ticket, name
            self.metrics.swaps.inc()
            self.metrics.set_active(name)
        return pipe

    def check_admin(self, request: Request) -> None:
        """Admin routes: the bearer token, when one is configured."""
        if not self.token:
            return  # loopback-only server (see serve())
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            self.metrics.error("unauthorized")
            raise HTTPException(
                401,
                "admin route: send 'Authorization: Bearer <token>' with the server's admin token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def _sweep_rows(self) -> list[dict]:
        p = Path(self.cfg.sweep)  # "" (no sweep) is the directory "."
        if not p.is_file():
            return []
        try:
            return json.loads(p.read_text()).get("rows", [])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            print(f"ignoring unreadable sweep results {p}: {e}", file=sys.stderr)
            return []

    def describe(self) -> list[dict]:
        good, broken = self.cards()
        cards = dict(good)
        if self.cfg.serve_teacher:
            cards["teacher"] = {
                "method": "teacher",
                "steps": TEACHER_STEPS,
                "teacher_dir": self._teacher_dir(good),
            }
        out = []
        for name, card in cards.items():
            rows = [
                r
                for r in self.sweep
                if r.get("model") == name or (name == "teacher" and r.get("method") == "teacher")
            ]
            out.append(
                {
                    "name": name,
                    "active": name == self.active,
                    "loaded": name in self.pipelines,
                    "card": card,
                    "sweep": rows,
                }
            )
        out += [{"name": n, "broken": True, "error": e} for n, e in broken.items()]
        return out

    # --- choosing what to run ----------------------------------------------------------------
    def choose(self, student: str | None, steps: int | None, latency_ms: float | None):
        """(pipeline, steps, why) for a request: by name and steps, or by a latency budget."""
        if latency_ms is None and student is None and steps is None and self.cfg.latency_ms > 0:
            latency_ms = self.cfg.latency_ms
        if latency_ms is None:
            pipe = self.get(student)
            try:
                return pipe, pipe.check_steps(steps), None
            except ValueError as e:
                raise HTTPException(422, str(e)) from None
        if student is not None or steps is not None:
            raise HTTPException(422, "give either latency_ms or student/steps, not both")
        with self.lock:
            options = [o for o in self.front if o.student in self.pipelines]
        if not options:
            raise HTTPException(
                409,
                "no latency budget possible: no sweep results with a loaded student on their "
                f"Pareto front (sweep: {Path(self.cfg.sweep).name or 'none'})",
            )
        o, why = budget.pick(
            options, latency_ms, self.batcher.pending, self.latency, self.cfg.budget_quality
        )
        return self.get(o.student), o.steps, {"student": o.student, "steps": o.steps, **why}

    def _batch_ran(self, key: tuple[str, int], ms: float, n: int) -> None:
        sweep_ms = next((o.latency_ms for o in self.front if (o.student, o.steps) == key), None)
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
    app = FastAPI(title="distill-lab serving", version="0.2.0")
    app.state.server = server
    app.add_middleware(
        Guard,
        max_body_bytes=cfg.max_body_bytes,
        body_timeout_s=cfg.body_timeout_s,
        on_response=server.metrics.response,
        on_error=server.metrics.error,
    )

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        server.metrics.error("internal")
        return JSONResponse({"detail": f"internal error: {type(e).__name__}"}, status_code=500)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "active": server.active, "uptime_s": time.time() - server.started}

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.text(), media_type=server.metrics.content_type)

    @app.get("/v1/students")
    async def students():
        return {"active": server.active, "students": server.describe()}

    @app.post("/v1/students/{name}/activate")
    async def activate(name: str, request: Request):
        server.check_admin(request)
        pipe = await server.activate(name)
        return {"active": name, "weights": pipe.weights, "method": pipe.method, "steps": pipe.steps}

    @app.post("/v1/generate")
    async def generate(request: Request):
        t0 = time.perf_counter()
        label = server.active
        try:
            data, params = await _read(request)
            label = params.student or label
            pipe, steps, picked = server.choose(params.student, params.steps, params.latency_ms)
            label = pipe.name
            loop = asyncio.get_running_loop()
            try:
                cond = await loop.run_in_executor(
                    server.decoder, server.decode, data, pipe.image_size
                )
            except ValueError as e:
                server.metrics.error("bad_image")
                raise HTTPException(422, f"bad image: {e}") from None
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
        except HTTPException as e:
            server.metrics.request(server.label(label), e.status_code)
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

    return app


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
