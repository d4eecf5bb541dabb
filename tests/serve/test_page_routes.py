"""The page's routes without a browser: the page and its static files, the turntable of a PLY,
the sweep's points; and bad turntable input answered with a message that names the problem."""

import base64
import fnmatch
import io
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_util import png, serve_config, write_sweep
from tiny_util import ROOT

from scenes.rig import render_views
from serve.app import create_app
from serve.page import STATIC
from serve.request import route_of

PNG = {"content-type": "image/png"}
PLY = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def client(serving, tmp_path_factory):
    sweep = write_sweep(tmp_path_factory.mktemp("sweep") / "results.json")
    return TestClient(create_app(serve_config(serving, sweep=str(sweep))))


@pytest.fixture(scope="module")
def ply(client) -> bytes:
    r = client.post("/v1/generate", content=png(), params={"steps": 1, "seed": 3}, headers=PNG)
    return base64.b64decode(r.json()["ply"])


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), np.int16)


def test_page_and_static_files_with_their_content_types(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>distill-lab" in r.text
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert sorted(refs) == ["/static/page.css", "/static/page.js", "/static/plot.js"]
    kinds = {".js": "javascript", ".css": "text/css", ".html": "text/html"}
    for f in sorted(STATIC.iterdir()):
        r = client.get(f"/static/{f.name}")
        assert r.status_code == 200 and r.content == f.read_bytes(), f.name
        assert kinds[f.suffix] in r.headers["content-type"], (f.name, r.headers["content-type"])
    assert client.get("/static/nothing.js").status_code == 404


def test_page_refers_to_no_other_host():
    """No CDN, no fonts, no analytics: no absolute URL, no protocol-relative one, no import."""
    for f in sorted(STATIC.iterdir()):
        text = f.read_text()
        assert not re.search(r"https?://", text, re.I), f.name
        assert not re.search(r"""(?:src|href|url\()\s*=?\s*["']?//""", text), f.name
        assert "@import" not in text and "import(" not in text, f.name


def test_static_files_are_package_data():
    """pip install (not only -e) ships every file the page serves."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["serve"]
    for f in STATIC.iterdir():
        rel = f"static/{f.name}"
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
    assert "selenium" in " ".join(cfg["project"]["optional-dependencies"]["dev"])


def test_turntable_at_the_rig_cameras_is_the_rig_render(client, ply):
    """Four frames at the rig's size and elevation are the reconstructor's target cameras: the
    same images as rendering the PLY's Gaussians into the pipeline's rig."""
    from recon.gaussians import ply_decode

    pipe = client.app.state.server.registry.get(None)
    size = pipe.image_size
    r = client.post(
        "/v1/turntable",
        content=ply,
        params={"frames": 4, "size": size, "elevation": 20},
        headers=PLY,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["azimuths"] == [0.0, 90.0, 180.0, 270.0] and body["size"] == size
    assert body["elevation"] == 20.0 and body["timings_ms"]["render"] > 0
    g = ply_decode(ply)
    assert body["gaussians"] == g.count
    want = render_views(g, pipe.rig.target_viewmats, pipe.rig.K, size)
    for got, ref in zip(body["frames_png"], want):
        ref_png = ((ref.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
        assert np.abs(_decode(got) - ref_png.astype(np.int16)).max() <= 1


def test_turntable_defaults(client, ply):
    body = client.post("/v1/turntable", content=ply, headers=PLY).json()
    assert len(body["frames_png"]) == 24 and body["azimuths"][1] == 15.0
    assert _decode(body["frames_png"][0]).shape == (64, 64, 3)  # 2x the 16 px rig, at least 64
    assert body["elevation"] == 20.0  # the world's target elevation


def test_turntable_bad_input_names_the_problem(client, ply):
    header_end = ply.index(b"end_header\n") + len(b"end_header\n")
    nan = bytearray(ply)
    nan[header_end : header_end + 4] = np.float32("nan").tobytes()
    cases = [
        ({}, b"", "no PLY in the request body"),
        ({}, png(), "PLY: not a PLY file"),
        ({}, ply[: header_end + 40], "vertices declared, data for 0"),
        ({}, bytes(nan), "PLY: non-finite values in means"),
        ({}, ply.replace(b"element vertex", b"element vortex"), "one 'element vertex <count>'"),
        ({"frames": 0}, ply, "frames must be 1..72, got 0"),
        ({"frames": "1.5"}, ply, "frames: an integer is required, got '1.5'"),
        ({"size": 4}, ply, "size must be 16..512 pixels, got 4"),
        ({"elevation": "nan"}, ply, "elevation: a finite number is required"),
        ({"elevation": 95}, ply, "elevation must be within +-89 degrees, got 95.0"),
        ({"frame": 3}, ply, "unknown parameters ['frame']"),
    ]
    for params, data, message in cases:
        r = client.post("/v1/turntable", content=data, params=params, headers=PLY)
        assert r.status_code == 422 and message in r.json()["detail"], (params, r.text)
    assert client.post("/v1/turntable", content=ply, headers=PLY).status_code == 200


def test_sweep_points_and_front(client):
    body = client.get("/v1/sweep").json()
    assert body["quality"] == "fid" and body["lower_is_better"] and body["source"] == "results.json"
    got = {
        (p["student"], p["steps"]): (p["latency_ms"], p["quality"], p["front"])
        for p in body["points"]
    }
    assert got == {
        ("teacher", 50): (501.0, 9.0, False),
        ("shortcut", 1): (3.0, 8.0, True),
        ("shortcut", 2): (7.0, 7.5, False),
        ("consistency", 1): (4.0, 7.0, True),
        ("consistency", 2): (6.0, 5.0, True),
    }
    assert [(o["student"], o["steps"]) for o in body["front"]] == [
        ("shortcut", 1),
        ("consistency", 1),
        ("consistency", 2),
    ]


def test_sweep_without_results(serving):
    c = TestClient(create_app(serve_config(serving, sweep="")))
    assert c.get("/v1/sweep").json() | {"quality": None} == {
        "quality": None,
        "lower_is_better": True,
        "source": None,
        "device": None,
        "points": [],
        "front": [],
    }


def test_page_routes_have_metric_labels():
    assert route_of("/") == "/" and route_of("/static/page.js") == "/static"
    assert route_of("/v1/turntable") == "/v1/turntable" and route_of("/v1/sweep") == "/v1/sweep"
    assert route_of("/index.html") == "other"


def test_readme_shows_the_page():
    text = (ROOT / "README.md").read_text()
    assert "docs/serve/page.png" in text and "apt-get install -y chromium chromium-driver" in text
    assert Path(ROOT / "docs/serve/page.png").is_file()
