"""Helpers for the serving tests: tiny students, PNG bytes, a server on a real socket, metrics."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from serve.app import ServeConfig, create_app
from serve.listen import uvicorn_config


def png(size: int = 16, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def samples(text: str) -> dict:
    """A Prometheus page as {(sample name, sorted labels): value}; fails on a malformed page."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def serve_config(serving: Path, **kw) -> ServeConfig:
    kw = {"default": "shortcut", "sweep": "", "max_wait_ms": 5, **kw}
    return ServeConfig(
        students=str(serving / "students"), reconstructor=str(serving / "recon"), **kw
    )


class RunningServer:
    """The service on a loopback socket, run by uvicorn in a thread of this process (so tests
    can reach into ``.server``), with the same protocol and limits as ``distill serve``."""

    def __init__(self, cfg: ServeConfig):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = create_app(cfg)
        self.server = self.app.state.server
        self.uv = uvicorn.Server(uvicorn_config(self.app, cfg, "127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.uv.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.uv.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.uv.should_exit = True
        self.thread.join(timeout=15)


def write_sweep(path: Path) -> Path:
    """A small sweep results.json for the tiny serving students: the teacher slow and dominated,
    shortcut@1, consistency@1 and consistency@2 on the FID front, shortcut@2 off it."""
    rows = [  # (model, method, steps, diffusion ms, fid)
        ("teacher", "teacher", 50, 500.0, 9.0),
        ("shortcut", "shortcut", 1, 2.0, 8.0),
        ("shortcut", "shortcut", 2, 6.0, 7.5),
        ("consistency", "consistency", 1, 3.0, 7.0),
        ("consistency", "consistency", 2, 5.0, 5.0),
    ]
    out = [
        {"model": m, "method": k, "sampler": "euler", "steps": s, "diffusion_ms": d,
         "recon_ms": 1.0, "total_ms": d + 1.0, "fid": f, "fid_ci95": 0.5, "device": "test cpu"}
        for m, k, s, d, f in rows
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": {}, "rows": out}))
    return path
