import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi import HTTPException
from fastapi.testclient import TestClient
from PIL import Image
from serve_util import png as _png
from serve_util import samples, serve_config
from tiny_util import ROOT

from recon.gaussians import load_ply
from serve import registry
from serve.app import STATUS, create_app
from serve.budget import LatencyModel
from serve.metrics import ServeMetrics
from serve.pipeline import Pipeline, encode_png

PNG = {"content-type": "image/png"}


def test_pipeline_api(serving):
    pipe = Pipeline.from_pretrained(serving / "students" / "shortcut", serving / "recon")
    views, g, tm = pipe([_png()], steps=2, seed=3)
    assert views.shape == (1, 4, 3, 16, 16) and g.means.shape == (1, 4 * 16 * 16, 3)
    assert tm.total_ms >= tm.diffusion_ms > 0
    again, _, _ = pipe([_png()], steps=2, seed=3)
    assert torch.equal(views, again)
    with pytest.raises(ValueError, match=r"does not support 3 steps; supported: \[1, 2\]"):
        pipe([_png()], steps=3)


def test_endpoints_and_bad_input(serving):
    app = create_app(serve_config(serving, max_body_bytes=200_000))
    c = TestClient(app)
    assert c.get("/healthz").json()["active"] == "shortcut"
    r = c.post(
        "/v1/generate",
        content=_png(),
        params={"steps": 2, "seed": 5},
        headers={"content-type": "image/png"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["student"] == "shortcut" and len(body["weights"]) == 16
    assert len(body["views_png"]) == 4 and body["timings_ms"]["total"] > 0
    ply = base64.b64decode(body["ply"])
    assert ply.startswith(b"ply")
    # multipart and base64 JSON carry the same request
    r2 = c.post(
        "/v1/generate",
        files={"image": ("a.png", _png(), "image/png")},
        data={"steps": "2", "seed": "5"},
    )
    r3 = c.post(
        "/v1/generate", json={"image_b64": base64.b64encode(_png()).decode(), "steps": 2, "seed": 5}
    )
    assert r2.json()["views_png"] == body["views_png"] == r3.json()["views_png"]
    # a larger image is resized, by default
    assert (
        c.post(
            "/v1/generate",
            content=_png(40),
            headers={"content-type": "image/png"},
            params={"steps": 1},
        ).status_code
        == 200
    )
    # bad input: each answered cleanly
    r = c.post("/v1/generate", content=b"not an image", headers={"content-type": "image/png"})
    assert r.status_code == 422 and "not a readable PNG/JPEG" in r.json()["detail"]
    r = c.post("/v1/generate", content=_png()[:60], headers={"content-type": "image/png"})
    assert r.status_code == 422
    r = c.post(
        "/v1/generate", content=_png(), params={"steps": 7}, headers={"content-type": "image/png"}
    )
    assert r.status_code == 422 and "supported: [1, 2]" in r.json()["detail"]
    r = c.post(
        "/v1/generate",
        content=_png(),
        params={"student": "nope"},
        headers={"content-type": "image/png"},
    )
    assert r.status_code == 404 and "available" in r.json()["detail"]
    r = c.post("/v1/generate", content=b"x" * 300_000, headers={"content-type": "image/png"})
    assert r.status_code == 413
    assert c.post("/v1/students/nope/activate").status_code == 404
    # the worker survived all of it
    assert (
        c.post(
            "/v1/generate",
            content=_png(),
            headers={"content-type": "image/png"},
            params={"steps": 1},
        ).status_code
        == 200
    )
    # students, activation and metrics
    lst = c.get("/v1/students").json()
    assert {s["name"] for s in lst["students"]} >= {"shortcut", "consistency", "teacher"}
    assert c.post("/v1/students/consistency/activate").json()["active"] == "consistency"
    r = c.post("/v1/generate", content=_png(), headers={"content-type": "image/png"})
    assert r.json()["student"] == "consistency"
    m = samples(c.get("/metrics").text)
    assert m[("distill_requests_total", (("status", "200"), ("student", "shortcut")))] >= 3
    assert m[("distill_active_student", (("student", "consistency"),))] == 1
    assert m[("distill_active_student", (("student", "shortcut"),))] == 0
    assert m[("distill_errors_total", (("kind", "bad_image"),))] == 2
    assert m[("distill_errors_total", (("kind", "too_large"),))] == 1


def test_resize_off_and_broken_student(serving, tmp_path):
    app = create_app(serve_config(serving, resize=False))
    c = TestClient(app)
    r = c.post("/v1/generate", content=_png(40), headers={"content-type": "image/png"})
    assert r.status_code == 422 and "resizing is off" in r.json()["detail"]
    # a broken folder dropped into the students dir is rejected; the active one keeps serving
    bad = serving / "students" / "broken"
    bad.mkdir(exist_ok=True)
    card = json.loads((serving / "students" / "shortcut" / "student.json").read_text())
    (bad / "student.json").write_text(json.dumps(card))
    try:
        r = c.post("/v1/students/broken/activate")
        assert r.status_code == 422 and "cannot load student 'broken'" in r.json()["detail"]
        ok = c.post("/v1/generate", content=_png(), headers={"content-type": "image/png"})
        assert ok.status_code == 200 and ok.json()["student"] == "shortcut"
    finally:
        (bad / "student.json").unlink()
        bad.rmdir()


def test_server_swaps_mid_traffic(serving):
    """A real server process: concurrent clients, swaps, every answer from the named student."""
    refs = {}
    for name in ("shortcut", "consistency"):
        pipe = Pipeline.from_pretrained(serving / "students" / name, serving / "recon")
        from serve.pipeline import decode_image

        views, _, _ = pipe(
            torch.stack([decode_image(_png(seed=i)) for i in range(3)]),
            steps=1,
            seed=[100, 101, 102],
        )
        refs[name] = [
            [np.asarray(Image.open(io.BytesIO(encode_png(v))), np.int16) for v in vs]
            for vs in views
        ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distill.cli",
            "serve",
            "--students",
            str(serving / "students"),
            "--reconstructor",
            str(serving / "recon"),
            "--port",
            str(port),
            "default=shortcut",
            "sweep=",
            "max_batch=4",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail(proc.stderr.read())
        results, errors = [], []

        def client(k):
            for n in range(6):
                i = (k + n) % 3
                r = httpx.post(
                    base + "/v1/generate",
                    content=_png(seed=i),
                    timeout=60,
                    params={"steps": 1, "seed": 100 + i},
                    headers={"content-type": "image/png"},
                )
                if r.status_code != 200:
                    errors.append(r.text)
                else:
                    results.append((i, r.json()))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        swaps = 0
        for name in ("consistency", "shortcut", "consistency"):
            time.sleep(0.3)
            assert httpx.post(f"{base}/v1/students/{name}/activate", timeout=60).status_code == 200
            swaps += 1
        for t in threads:
            t.join()
        assert not errors and len(results) == 24
        assert {body["student"] for _, body in results} == {"shortcut", "consistency"}
        for i, body in results:
            for n, v in enumerate(body["views_png"]):
                got = np.asarray(Image.open(io.BytesIO(base64.b64decode(v))), np.int16)
                assert np.abs(got - refs[body["student"]][i][n]).max() <= 3
            g = body["ply"]
            assert len(base64.b64decode(g)) > 100
        m = samples(httpx.get(base + "/metrics").text)
        assert m[("distill_swaps_total", ())] == 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ply_from_response_loads(serving, tmp_path):
    c = TestClient(create_app(serve_config(serving)))
    body = c.post("/v1/generate", content=_png(), headers={"content-type": "image/png"}).json()
    (tmp_path / "o.ply").write_bytes(base64.b64decode(body["ply"]))
    g = load_ply(tmp_path / "o.ply")
    assert g.count > 0 and g.opacities.min() >= 1 / 255 - 1e-6


def test_registry_refuses_with_its_own_exceptions(serving):
    """No HTTP in the registry: an unknown student and unsupported steps are its own exceptions."""
    reg = registry.Registry(serve_config(serving, preload_front=False), ServeMetrics())
    known = r"\['consistency', 'shortcut', 'teacher'\]"
    with pytest.raises(
        registry.UnknownStudent, match=rf"unknown student 'nope'; available: {known}"
    ):
        reg.get("nope")
    with pytest.raises(registry.UnknownStudent):
        asyncio.run(reg.activate("nope"))
    with pytest.raises(registry.UnsupportedSteps, match=r"supported: \[1, 2\]$"):
        reg.choose("shortcut", 7, None, 0, LatencyModel())
    with pytest.raises(registry.NotLoaded, match="activate it first"):
        reg.get("consistency")
    with pytest.raises(registry.BudgetAndChoice):
        reg.choose("shortcut", None, 100.0, 0, LatencyModel())
    with pytest.raises(registry.NoBudget, match=r"\(sweep: none\)$"):
        reg.choose(None, None, 100.0, 0, LatencyModel())
    assert not issubclass(registry.RegistryError, HTTPException)


def test_app_maps_each_registry_exception_to_its_status(serving):
    """One table maps every registry exception to a status; the routes answer with its message."""
    assert set(STATUS) == set(registry.RegistryError.__subclasses__())
    c = TestClient(create_app(serve_config(serving, preload_front=False)))
    known = ["consistency", "shortcut", "teacher"]

    def generate(**params):
        return c.post("/v1/generate", content=_png(), params=params, headers=PNG)

    cases = [
        (generate(student="nope"), registry.UnknownStudent("nope", known)),
        (c.post("/v1/students/nope/activate"), registry.UnknownStudent("nope", known)),
        (
            generate(steps=7),
            registry.UnsupportedSteps("shortcut does not support 7 steps; supported: [1, 2]"),
        ),
        (generate(student="consistency"), registry.NotLoaded("consistency")),
        (generate(student="shortcut", latency_ms=100), registry.BudgetAndChoice()),
        (generate(latency_ms=100), registry.NoBudget("")),
    ]
    for r, e in cases:
        assert (r.status_code, r.json()) == (STATUS[type(e)], {"detail": str(e)})
    assert [r.status_code for r, _ in cases] == [404, 404, 422, 409, 422, 409]
    assert cases[3][0].json()["detail"] == (
        "student 'consistency' is not loaded; activate it first "
        "(POST /v1/students/consistency/activate)"
    )
