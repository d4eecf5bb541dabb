"""The HTTP service: image -> views + 3D Gaussians, with students swapped in while traffic flows.

- Students load off the request path (on activation, in the compute thread's spare time is not
  needed: loading runs in its own thread) and the active pointer is swapped atomically; a
  request holds the pipeline it started with until it finishes, so a swap never fails one.
- Concurrent requests for the same student and step count are batched (``max_batch``,
  ``max_wait_ms``); all model work runs on one compute thread.
- Bad input is answered, never crashes the worker: 422 (unreadable image, wrong size when
  resizing is off, unsupported steps), 413 (body too large), 404 (unknown student).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from serve.pipeline import TEACHER_STEPS, Pipeline, decode_image, encode_png, ply_bytes


@dataclass
class ServeConfig:
    students: str = "shipped/students"  # a folder of student folders (new ones can be added)
    reconstructor: str = "shipped/recon"
    teacher: str = ""  # teacher folder for students (default: each card's teacher_dir)
    serve_teacher: bool = True  # also serve the teacher itself, as "teacher"
    default: str = ""  # the first active student (default: the first one found)
    max_batch: int = 8  # requests batched together (same student and steps)
    max_wait_ms: float = 10.0  # how long a batch waits to fill
    max_body_bytes: int = 4 * 2**20  # larger request bodies get 413
    resize: bool = True  # resize condition images of another size (else 422)
    sweep: str = "docs/sweep/results.json"  # sweep results shown by /v1/students
    device: str = "auto"


class _Metrics:
    """Prometheus text exposition of request counts, errors, stage latencies, batches."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.errors: dict[str, int] = {}
        self.latency: dict[str, list[float]] = {}  # stage -> [count, sum]
        self.batches = [0, 0]  # batches, batched requests
        self.swaps = 0

    def request(self, student: str, status: int) -> None:
        with self.lock:
            k = (student, str(status))
            self.requests[k] = self.requests.get(k, 0) + 1

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def observe(self, stage: str, ms: float) -> None:
        with self.lock:
            c = self.latency.setdefault(stage, [0, 0.0])
            c[0] += 1
            c[1] += ms / 1000

    def text(self, active: str) -> str:
        with self.lock:
            out = [
                "# HELP distill_requests_total Requests by student and HTTP status.",
                "# TYPE distill_requests_total counter",
            ]
            for (s, st), n in sorted(self.requests.items()):
                out.append(f'distill_requests_total{{student="{s}",status="{st}"}} {n}')
            out += [
                "# HELP distill_errors_total Rejected or failed requests by kind.",
                "# TYPE distill_errors_total counter",
            ]
            for k, n in sorted(self.errors.items()):
                out.append(f'distill_errors_total{{kind="{k}"}} {n}')
            out += [
                "# HELP distill_stage_seconds Latency per stage.",
                "# TYPE distill_stage_seconds summary",
            ]
            for stage, (n, s) in sorted(self.latency.items()):
                out.append(f'distill_stage_seconds_count{{stage="{stage}"}} {n}')
                out.append(f'distill_stage_seconds_sum{{stage="{stage}"}} {s:.6f}')
            out += [
                "# TYPE distill_batches_total counter",
                f"distill_batches_total {self.batches[0]}",
                "# TYPE distill_batched_requests_total counter",
                f"distill_batched_requests_total {self.batches[1]}",
                "# TYPE distill_swaps_total counter",
                f"distill_swaps_total {self.swaps}",
                "# HELP distill_active_student The student new requests go to.",
                "# TYPE distill_active_student gauge",
                f'distill_active_student{{student="{active}"}} 1',
            ]
            return "\n".join(out) + "\n"


@dataclass
class _Job:
    image: torch.Tensor
    seed: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class _Queue:
    jobs: list = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Server:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = _Metrics()
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")
        self.lock = threading.Lock()
        self.pipelines: dict[str, Pipeline] = {}
        self.teacher = None
        self.recon_dir = cfg.reconstructor
        self.queues: dict[tuple[str, int], _Queue] = {}
        self.sweep = self._sweep_rows()
        names = self.available()
        if cfg.serve_teacher:
            names = names + ["teacher"]
        first = cfg.default or (names[0] if names else "")
        if not first:
            raise FileNotFoundError(f"no student folders under {cfg.students}")
        self.active = first
        self.pipelines[first] = self._load(first)
        self.started = time.time()

    # --- students ---------------------------------------------------------------------------
    def available(self) -> list[str]:
        root = Path(self.cfg.students)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "student.json").exists())

    def _folder(self, name: str) -> Path:
        return Path(self._teacher_dir()) if name == "teacher" else Path(self.cfg.students) / name

    def _teacher_dir(self) -> str:
        if self.cfg.teacher:
            return self.cfg.teacher
        for name in self.available():
            card = json.loads((Path(self.cfg.students) / name / "student.json").read_text())
            return card["teacher_dir"]
        return "shipped/teacher"

    def _load(self, name: str) -> Pipeline:
        """Load a student (or the teacher) and warm it up; raises on a broken folder."""
        from teachers.io import load_teacher

        folder = self._folder(name)
        if name != "teacher" and not (folder / "student.json").exists():
            raise FileNotFoundError(f"unknown student {name!r}; available: {self.available()}")
        if self.teacher is None:
            self.teacher = load_teacher(self._teacher_dir())
        pipe = Pipeline.from_pretrained(
            folder,
            self.recon_dir,
            device=self.cfg.device,
            teacher=self.teacher if name != "teacher" else None,
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
            known = self.available() + (["teacher"] if self.cfg.serve_teacher else [])
            if name not in known:
                raise HTTPException(404, f"unknown student {name!r}; available: {known}")
            raise HTTPException(
                409,
                f"student {name!r} is not loaded; activate it first "
                f"(POST /v1/students/{name}/activate)",
            )
        return pipe

    async def activate(self, name: str) -> Pipeline:
        known = self.available() + (["teacher"] if self.cfg.serve_teacher else [])
        if name not in known:
            raise HTTPException(404, f"unknown student {name!r}; available: {known}")
        with self.lock:
            pipe = self.pipelines.get(name)
        if pipe is None:
            loop = asyncio.get_running_loop()
            try:
                pipe = await loop.run_in_executor(self.loader, self._load, name)
            except Exception as e:  # a broken folder: keep serving the active one
                self.metrics.error("activate")
                raise HTTPException(422, f"cannot load student {name!r}: {e}") from e
        with self.lock:
            self.pipelines[name] = pipe
            self.active = name
            self.metrics.swaps += 1
        return pipe

    def _sweep_rows(self) -> list[dict]:
        p = Path(self.cfg.sweep)  # "" (no sweep) is the directory "."
        if not p.is_file():
            return []
        try:
            return json.loads(p.read_text()).get("rows", [])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            print(f"ignoring unreadable sweep results {p}: {e}")
            return []

    def describe(self) -> list[dict]:
        out = []
        names = self.available() + (["teacher"] if self.cfg.serve_teacher else [])
        for name in names:
            item = {"name": name, "active": name == self.active, "loaded": name in self.pipelines}
            if name == "teacher":
                item["card"] = {
                    "method": "teacher",
                    "steps": TEACHER_STEPS,
                    "teacher_dir": self._teacher_dir(),
                }
            else:
                try:
                    item["card"] = json.loads((self._folder(name) / "student.json").read_text())
                except (OSError, json.JSONDecodeError) as e:
                    item["error"] = f"unreadable student.json: {e}"
            item["sweep"] = [
                r
                for r in self.sweep
                if r.get("model") == name or (name == "teacher" and r.get("method") == "teacher")
            ]
            out.append(item)
        return out

    # --- batching ---------------------------------------------------------------------------
    async def submit(self, pipe: Pipeline, steps: int, image: torch.Tensor, seed: int):
        loop = asyncio.get_running_loop()
        # one queue and drain task per event loop as well: a test client may run each request
        # in a fresh loop, and a queue's event and task belong to the loop that made them
        key = (id(loop), id(pipe), steps)
        job = _Job(image, seed, loop.create_future(), loop)
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = _Queue()
            asyncio.create_task(self._drain(key, pipe, steps))
        q.jobs.append(job)
        q.event.set()
        return await job.future

    async def _drain(self, key, pipe: Pipeline, steps: int) -> None:
        q = self.queues[key]
        loop = asyncio.get_running_loop()
        while True:
            await q.event.wait()
            if len(q.jobs) < self.cfg.max_batch and self.cfg.max_wait_ms > 0:
                await asyncio.sleep(self.cfg.max_wait_ms / 1000)
            batch, q.jobs = q.jobs[: self.cfg.max_batch], q.jobs[self.cfg.max_batch :]
            if not q.jobs:
                q.event.clear()
            if not batch:
                continue
            try:
                res = await loop.run_in_executor(self.compute, self._run_batch, pipe, steps, batch)
                for job, r in zip(batch, res):
                    job.future.set_result(r)
            except Exception as e:  # surface to each request, keep the worker alive
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)

    def _run_batch(self, pipe: Pipeline, steps: int, batch: list[_Job]) -> list[dict]:
        images = torch.stack([j.image for j in batch])
        views, g, tm = pipe(images, steps=steps, seed=[j.seed for j in batch])
        self.metrics.batches[0] += 1
        self.metrics.batches[1] += len(batch)
        self.metrics.observe("diffusion", tm.diffusion_ms)
        self.metrics.observe("reconstruction", tm.recon_ms)
        out = []
        for i in range(len(batch)):
            t0 = time.perf_counter()
            pngs = [base64.b64encode(encode_png(v)).decode() for v in views[i]]
            ply = base64.b64encode(ply_bytes(g.map(lambda t, i=i: t[i]))).decode()
            enc_ms = (time.perf_counter() - t0) * 1000
            out.append(
                {
                    "views_png": pngs,
                    "ply": ply,
                    "timings_ms": {
                        "diffusion": tm.diffusion_ms,
                        "reconstruction": tm.recon_ms,
                        "encode": enc_ms,
                        "batch_size": len(batch),
                    },
                }
            )
        return out


def create_app(cfg: ServeConfig) -> FastAPI:
    server = Server(cfg)
    app = FastAPI(title="distill-lab serving", version="0.1.0")
    app.state.server = server

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > cfg.max_body_bytes:
            server.metrics.error("too_large")
            return JSONResponse(
                {
                    "detail": f"request body of {size} bytes exceeds the limit of "
                    f"{cfg.max_body_bytes} bytes"
                },
                status_code=413,
            )
        return await call_next(request)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "active": server.active, "uptime_s": time.time() - server.started}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return server.metrics.text(server.active)

    @app.get("/v1/students")
    async def students():
        return {"active": server.active, "students": server.describe()}

    @app.post("/v1/students/{name}/activate")
    async def activate(name: str):
        pipe = await server.activate(name)
        return {"active": name, "weights": pipe.weights, "method": pipe.method, "steps": pipe.steps}

    @app.post("/v1/generate")
    async def generate(request: Request):
        t0 = time.perf_counter()
        body = await request.body()
        if len(body) > cfg.max_body_bytes:
            server.metrics.error("too_large")
            raise HTTPException(
                413, f"request body exceeds the limit of {cfg.max_body_bytes} bytes"
            )
        params = dict(request.query_params)
        ctype = request.headers.get("content-type", "")
        image_bytes = None
        try:
            if ctype.startswith("multipart/form-data"):
                form = await request.form()
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise ValueError("multipart body needs a file field named 'image'")
                image_bytes = await upload.read()
                params.update({k: v for k, v in form.items() if k != "image"})
            elif ctype.startswith("application/json"):
                data = json.loads(body)
                params.update({k: v for k, v in data.items() if k != "image_b64"})
                image_bytes = base64.b64decode(data["image_b64"], validate=True)
            else:
                image_bytes = body
            if not image_bytes:
                raise ValueError("no image in the request")
            image = decode_image(image_bytes)
        except HTTPException:
            raise
        except Exception as e:
            server.metrics.error("bad_image")
            server.metrics.request(params.get("student", server.active), 422)
            raise HTTPException(422, f"bad input: {e}") from e
        pipe = server.get(params.get("student"))
        try:
            steps = pipe.check_steps(params.get("steps"))
            seed = int(params.get("seed", torch.randint(0, 2**31 - 1, (1,)).item()))
            if not cfg.resize and image.shape[-2:] != (pipe.image_size, pipe.image_size):
                raise ValueError(
                    f"image must be {pipe.image_size}x{pipe.image_size}, got "
                    f"{image.shape[-1]}x{image.shape[-2]} (resizing is off)"
                )
            cond = pipe.prepare(image[None], resize=True)[0]
        except ValueError as e:
            server.metrics.error("bad_request")
            server.metrics.request(pipe.name, 422)
            raise HTTPException(422, str(e)) from e
        try:
            res = await server.submit(pipe, steps, cond, seed)
        except Exception as e:
            server.metrics.error("internal")
            server.metrics.request(pipe.name, 500)
            raise HTTPException(500, f"generation failed: {type(e).__name__}: {e}") from e
        total = (time.perf_counter() - t0) * 1000
        server.metrics.observe("total", total)
        server.metrics.request(pipe.name, 200)
        res["timings_ms"]["total"] = total
        return {
            "student": pipe.name,
            "method": pipe.method,
            "weights": pipe.weights,
            "steps": steps,
            "seed": seed,
            **res,
        }

    return app


def serve(cfg: ServeConfig, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(cfg), host=host, port=port, log_level="warning")
