"""The page to try the service in a browser, and the two JSON routes it needs beyond the API.

- ``GET /``: the page (serve/static/index.html); ``/static/*``: its script and style sheet.
  Everything is served by the app: no build step, no CDN. The page calls the JSON API.
- ``POST /v1/turntable``: a 3DGS PLY body (what ``/v1/generate`` returns as ``ply``, decoded)
  -> frames around the object drawn by the lab's rasterizer (``frames``, ``elevation``,
  ``size`` in the query; serve/turntable.py), as base64 PNGs.
- ``GET /v1/sweep``: the sweep's rows as (latency a user waits for, quality) points, and its
  Pareto front over the servable ones: what the page plots, marking the point just served.
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from serve import budget, turntable

STATIC = Path(__file__).parent / "static"
TURNTABLE_FRAMES = 24  # default frames per turntable
_INT = re.compile(r"[+-]?\d{1,9}")


def add_page(app: FastAPI, server) -> None:
    """Add the page, its static files, /v1/turntable and /v1/sweep to the service's app."""
    html = (STATIC / "index.html").read_text()
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(html)

    @app.post("/v1/turntable")
    async def turntable_frames(request: Request):
        frames, elevation, size = _turntable_params(dict(request.query_params))
        data = await request.body()
        if not data:
            raise HTTPException(422, "no PLY in the request body")
        pipe = server.registry.get(None)  # the reconstructor (and device) every pipeline shares
        try:
            orbit = turntable.orbit_for(pipe.recon, frames, elevation, size)
            g = turntable.decode_gaussians(data)
        except ValueError as e:
            raise HTTPException(422, f"bad turntable request: {e}") from None
        loop = asyncio.get_running_loop()
        compute = server.batcher.compute  # the one compute thread, shared with generation
        return await loop.run_in_executor(
            compute, turntable.render_turntable, g, orbit, pipe.device
        )

    @app.get("/v1/sweep")
    async def sweep():
        return sweep_points(server.registry)


def _turntable_params(query: dict[str, str]) -> tuple[int, float | None, int | None]:
    """(frames, elevation, size) from the query string; 422 naming a bad or unknown one."""
    unknown = sorted(set(query) - {"frames", "elevation", "size"})
    if unknown:
        raise HTTPException(
            422, f"invalid request: unknown parameters {unknown}; known: frames, elevation, size"
        )

    def integer(key: str, default):
        v = query.get(key)
        if v is None:
            return default
        if not _INT.fullmatch(v.strip()):
            raise HTTPException(422, f"invalid request: {key}: an integer is required, got {v!r}")
        return int(v)

    elevation = query.get("elevation")
    if elevation is not None:
        try:
            elevation = float(elevation)
        except ValueError:
            elevation = math.nan
        if not math.isfinite(elevation):
            raise HTTPException(422, "invalid request: elevation: a finite number is required")
    return integer("frames", TURNTABLE_FRAMES), elevation, integer("size", None)


def sweep_points(registry) -> dict:
    """Every sweep row as a point (served name, steps, sampler, latency ms, quality, its 95%
    interval), flagged servable and on the front; the front the latency budget picks from."""
    quality = registry.cfg.budget_quality
    names = registry.known()
    front = {(o.student, o.steps) for o in registry.front}
    points = []
    for r in registry.sweep:
        name = "teacher" if r.get("method") == "teacher" else r.get("model")
        ms = budget.serving_ms(r)
        if name is None or ms is None or r.get(quality) is None:
            continue
        servable = name in names and (name != "teacher" or r.get("sampler") == "euler")
        points.append(
            {
                "student": name,
                "steps": int(r["steps"]),
                "sampler": r.get("sampler"),
                "latency_ms": ms,
                "quality": float(r[quality]),
                "ci95": r.get(quality + "_ci95"),
                "servable": servable,
                "front": servable and (name, int(r["steps"])) in front,
            }
        )
    return {
        "quality": quality,
        "lower_is_better": quality in budget.LOWER_IS_BETTER,
        "source": Path(registry.cfg.sweep).name if registry.sweep else None,
        "device": (registry.sweep[0].get("device") if registry.sweep else None),
        "points": points,
        "front": [
            {
                "student": o.student,
                "steps": o.steps,
                "latency_ms": o.latency_ms,
                "quality": o.quality,
            }
            for o in registry.front
        ],
    }
