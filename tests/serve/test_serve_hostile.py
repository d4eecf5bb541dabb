"""Hostile and careless input sent to a running server: each answer names the problem, and the
server keeps serving everyone else."""

import base64
import io
import json
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from serve_util import RunningServer, png, samples, serve_config

from serve import budget
from serve.listen import serve
from serve.pipeline import decode_image
from serve.request import SEED_MAX, public_message, route_of

TOKEN = "s3cret-admin-token"
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def live(serving):
    with RunningServer(serve_config(serving, admin_token=TOKEN, header_timeout_s=1.0)) as s:
        yield s


def _ok(base: str, **params) -> httpx.Response:
    return httpx.post(f"{base}/v1/generate", content=png(), headers=PNG, params=params, timeout=60)


def _concurrently(fns) -> list:
    out = [None] * len(fns)

    def run(i):
        out[i] = fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_bad_seed_fails_only_its_own_request(live):
    """A seed out of range is refused up front, and good requests beside it all succeed."""
    calls = [lambda: _ok(live.base, steps=1, seed=2**70)]
    calls += [lambda k=k: _ok(live.base, steps=1, seed=k) for k in range(7)]
    res = _concurrently(calls)
    assert res[0].status_code == 422 and "seed" in res[0].json()["detail"]
    assert [r.status_code for r in res[1:]] == [200] * 7
    assert _ok(live.base, steps=1, seed=SEED_MAX).status_code == 200
    assert _ok(live.base, steps=1, seed=-1).status_code == 422


def test_failing_batch_is_retried_job_by_job(live):
    """A job that breaks its batch fails alone (500, counted); the batch's other jobs succeed."""
    batcher = live.server.batcher
    real = batcher._run

    def poisoned(pipe, steps, batch):
        if any(j.seed == 13 for j in batch):
            raise RuntimeError("poisoned input at 0x7f00deadbeef in /secret/place/weights.bin")
        return real(pipe, steps, batch)

    before = samples(httpx.get(live.base + "/metrics").text)
    batcher._run = poisoned
    try:
        res = _concurrently(
            [lambda k=k: _ok(live.base, steps=1, seed=10 + k) for k in range(6)]
        )  # seeds 10..15, 13 poisoned
    finally:
        batcher._run = real
    codes = [r.status_code for r in res]
    assert codes == [200, 200, 200, 500, 200, 200], codes
    detail = res[3].json()["detail"]
    assert "poisoned input" in detail and "0x7f" not in detail and "/secret" not in detail
    after = samples(httpx.get(live.base + "/metrics").text)
    assert after[("distill_batch_retries_total", ())] > before[("distill_batch_retries_total", ())]
    key = ("distill_http_responses_total", (("route", "/v1/generate"), ("status", "500")))
    assert after[key] == before.get(key, 0) + 1


def test_image_bomb_refused_from_header(live):
    """A 236 KB PNG of 9000x9000 pixels is refused before decoding: no memory spike."""
    buf = io.BytesIO()
    Image.new("RGB", (9000, 9000), "white").save(buf, "PNG")
    assert len(buf.getvalue()) < 400_000
    rss = psutil.Process().memory_info().rss
    r = httpx.post(live.base + "/v1/generate", content=buf.getvalue(), headers=PNG, timeout=60)
    assert r.status_code == 422
    assert "9000x9000" in r.json()["detail"] and "exceeds the limit" in r.json()["detail"]
    assert psutil.Process().memory_info().rss - rss < 200 * 2**20  # decoding it costs ~4 GB
    assert httpx.get(live.base + "/healthz").status_code == 200
    assert _ok(live.base, steps=1).status_code == 200


def test_only_png_and_jpeg(live):
    for fmt in ("GIF", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, fmt)
        r = httpx.post(live.base + "/v1/generate", content=buf.getvalue(), headers=PNG)
        assert r.status_code == 422 and "PNG and JPEG" in r.json()["detail"], fmt
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, "JPEG")
    r = httpx.post(
        live.base + "/v1/generate",
        content=buf.getvalue(),
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert r.status_code == 200
    r = httpx.post(live.base + "/v1/generate", content=png(), headers={"content-type": "text/html"})
    assert r.status_code == 415 and "image/png" in r.json()["detail"]


def test_sixteen_bit_grey_decodes_like_eight_bit(live):
    grey8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    grey16 = grey8.astype(np.uint16) * 257  # the same intensities at 16 bits
    x8, x16 = (decode_image(_png_bytes(a)) for a in (grey8, grey16))
    assert np.abs((x8 - x16).numpy()).max() < 1e-6
    assert abs(float(x16.mean())) < 0.01  # mid grey, not almost white
    a, b = (
        httpx.post(
            live.base + "/v1/generate",
            content=_png_bytes(arr),
            headers=PNG,
            params={"steps": 1, "seed": 4},
            timeout=60,
        ).json()
        for arr in (grey8, grey16)
    )
    assert a["views_png"] == b["views_png"]


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"steps": [1]}, "steps"),
        ({"steps": {"a": 1}}, "steps"),
        ({"steps": None}, "steps"),
        ({"steps": 1.9}, "steps"),
        ({"steps": True}, "steps"),
        ({"seed": [3]}, "seed"),
        ({"seed": None}, "seed"),
        ({"student": {"x": 1}}, "student"),
        ({"student": None}, "student"),
        ({"student": ["shortcut"]}, "student"),
        ({"stpes": 2}, "stpes"),
        ({"latency_ms": "fast"}, "latency_ms"),
    ],
)
def test_wrong_types_are_422_naming_the_field(live, body, field):
    payload = {"image_b64": base64.b64encode(png()).decode(), **body}
    r = httpx.post(live.base + "/v1/generate", json=payload, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("invalid request: " + field)


@pytest.mark.parametrize(
    "params", [{"steps": "1.9"}, {"steps": "true"}, {"seed": "1e3"}, {"steps": ""}]
)
def test_query_integers_are_strict(live, params):
    r = httpx.post(live.base + "/v1/generate", content=png(), headers=PNG, params=params)
    assert r.status_code == 422 and "valid integer" in r.json()["detail"]


@pytest.mark.parametrize(
    "payload", [b"[1, 2]", b'"x"', b"{bad json", b'{"image_b64": 5}', b'{"image_b64": "@@@"}']
)
def test_bad_json_bodies(live, payload):
    r = httpx.post(
        live.base + "/v1/generate", content=payload, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"]


def test_metrics_cannot_be_injected_or_grown(live):
    evil = 'x"} 1\ndistill_forged_total 99\n#'
    r = httpx.post(
        live.base + "/v1/generate", content=b"junk", headers=PNG, params={"student": evil}
    )
    assert r.status_code == 422  # not a student name
    size = len(httpx.get(live.base + "/metrics").text)
    for k in range(200):  # well-formed but unknown names, on the bad-image path
        r = httpx.post(
            live.base + "/v1/generate", content=b"junk", headers=PNG, params={"student": f"n{k}"}
        )
        assert r.status_code == 404
    page = httpx.get(live.base + "/metrics")
    assert page.headers["content-type"].startswith("text/plain; version=")
    m = samples(page.text)  # parses: nothing forged, no broken line
    assert not any("forged" in name for name, _ in m)
    students = {v for _, labels in m for k, v in labels if k == "student"}
    assert students <= {"shortcut", "consistency", "teacher", "unknown"}
    assert m[("distill_requests_total", (("status", "404"), ("student", "unknown")))] >= 200
    assert len(page.text) < size + 2000  # the page does not grow with the names sent


def test_chunked_upload_stops_at_the_limit(serving):
    limit = 200_000
    sent = [0]

    def body():
        chunk = b"\0" * 65536
        for _ in range(800):  # 52 MB if read whole
            sent[0] += len(chunk)
            yield chunk

    with RunningServer(serve_config(serving, max_body_bytes=limit)) as s:
        try:
            r = httpx.post(s.base + "/v1/generate", content=body(), headers=PNG, timeout=30)
            assert r.status_code == 413 and str(limit) in r.json()["detail"]
        except httpx.TransportError:
            pass  # the server closed the connection on the excess body: also a refusal
        assert sent[0] < 20 * 2**20, f"client managed to send {sent[0]} bytes"
        m = samples(httpx.get(s.base + "/metrics").text)
        assert m[("distill_errors_total", (("kind", "too_large"),))] >= 1
        assert _ok(s.base, steps=1).status_code == 200
        r = httpx.post(s.base + "/v1/generate", content=b"x" * (limit + 1), headers=PNG)
        assert r.status_code == 413


def test_broken_card_is_listed_not_fatal(serving, tmp_path, capfd):
    root = tmp_path / "students"
    shutil.copytree(serving / "students", root)
    (root / "aaa_broken").mkdir()
    (root / "aaa_broken" / "student.json").write_text("{not json")
    (root / "bbb_empty").mkdir()
    (root / "bbb_empty" / "student.json").write_text("[]")
    cfg = serve_config(serving, default="", preload_front=False)
    cfg.students = str(root)
    with RunningServer(cfg) as s:  # starts: the first readable student is the default
        assert s.server.registry.active == "consistency"
        lst = httpx.get(s.base + "/v1/students").json()["students"]
        broken = {x["name"]: x for x in lst if x.get("broken")}
        assert set(broken) == {"aaa_broken", "bbb_empty"}
        assert "aaa_broken/student.json" in broken["aaa_broken"]["error"]
        assert str(tmp_path) not in json.dumps(lst)
        assert {x["name"] for x in lst if not x.get("broken")} >= {"shortcut", "consistency"}
        r = httpx.post(s.base + "/v1/students/aaa_broken/activate")
        assert r.status_code == 404
        assert _ok(s.base, steps=1).status_code == 200
    err = capfd.readouterr().err
    assert "aaa_broken/student.json" in err and "bbb_empty/student.json" in err


def test_activation_errors_name_no_paths(serving, tmp_path):
    root = tmp_path / "students"
    shutil.copytree(serving / "students", root)
    (root / "shortcut" / "student.json").rename(root / "card.json")
    card = json.loads((root / "card.json").read_text())
    (root / "ghost").mkdir()
    (root / "ghost" / "student.json").write_text(json.dumps(card))  # no weights beside it
    cfg = serve_config(serving, default="consistency", preload_front=False)
    cfg.students = str(root)
    with RunningServer(cfg) as s:
        r = httpx.post(s.base + "/v1/students/ghost/activate", timeout=60)
        assert r.status_code == 422 and "cannot load student 'ghost'" in r.json()["detail"]
        assert str(tmp_path) not in r.text and " at 0x" not in r.text
        assert _ok(s.base, steps=1).status_code == 200


def test_overlapping_activations_end_with_the_newest(serving):
    cfg = serve_config(serving, default="shortcut", preload_front=False)
    with RunningServer(cfg) as s:
        real = s.server.registry._load

        def slow(name):
            time.sleep(1.5)
            return real(name)

        s.server.registry._load = slow

        def activate(name, delay):
            time.sleep(delay)
            return httpx.post(f"{s.base}/v1/students/{name}/activate", timeout=60)

        older, newer = _concurrently(
            [lambda: activate("consistency", 0), lambda: activate("shortcut", 0.3)]
        )
        assert newer.status_code == 200
        assert older.status_code == 409 and "superseded" in older.json()["detail"]
        assert s.server.registry.active == "shortcut"
        assert httpx.get(s.base + "/healthz").json()["active"] == "shortcut"
        # in order, both take effect
        assert activate("consistency", 0).status_code == 200
        assert activate("shortcut", 0).status_code == 200
        assert s.server.registry.active == "shortcut"


def test_admin_routes_need_the_token(live):
    url = live.base + "/v1/students/consistency/activate"
    r = httpx.post(url)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.post(url, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, headers={"authorization": TOKEN}).status_code == 401
    ok = httpx.post(url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["active"] == "consistency"
    back = httpx.post(
        live.base + "/v1/students/shortcut/activate",
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert back.status_code == 200


def test_refuses_public_bind_without_token(serving, monkeypatch):
    monkeypatch.delenv("DISTILL_ADMIN_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="refusing to bind 0.0.0.0.*DISTILL_ADMIN_TOKEN"):
        serve(serve_config(serving), "0.0.0.0", 0)


def test_stalled_headers_are_cut_off(live):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n")  # never finished
        sock.settimeout(10)
        assert sock.recv(1024) == b""  # closed by the server
    assert time.monotonic() - t0 < 8  # header_timeout_s=1.0 here; never reached otherwise
    assert httpx.get(live.base + "/healthz").status_code == 200


def test_stalled_body_gets_408(serving):
    with RunningServer(serve_config(serving, body_timeout_s=0.5)) as s:
        with socket.create_connection(("127.0.0.1", s.port)) as sock:
            sock.sendall(
                b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\n" + b"\x89PNG"
            )
            sock.settimeout(10)
            assert sock.recv(4096).startswith(b"HTTP/1.1 408")
        assert _ok(s.base, steps=1).status_code == 200


def test_every_status_is_counted(live):
    before = samples(httpx.get(live.base + "/metrics").text)
    httpx.post(live.base + "/v1/generate", content=png(), headers=PNG, params={"student": "zz"})
    httpx.post(
        live.base + "/v1/generate", content=png(), headers=PNG, params={"student": "teacher"}
    )
    httpx.post(live.base + "/v1/generate", content=b"x" * (5 * 2**20), headers=PNG)
    httpx.get(live.base + "/nowhere")
    m = samples(httpx.get(live.base + "/metrics").text)
    for route, status in [
        ("/v1/generate", "404"),
        ("/v1/generate", "409"),  # the teacher is known but not loaded
        ("/v1/generate", "413"),
        ("other", "404"),
    ]:
        key = ("distill_http_responses_total", (("route", route), ("status", status)))
        assert m[key] == before.get(key, 0) + 1, key


def test_public_message_and_routes():
    e = OSError("cannot open /home/me/lab/students/x/weights.bin: <obj at 0x7fab12>")
    assert public_message(e) == "cannot open weights.bin: <obj>"
    assert route_of("/v1/students/abc/activate") == "/v1/students/{name}/activate"
    assert route_of("/v1/generate") == "/v1/generate" and route_of("/x/y") == "other"


# --- latency budgets ----------------------------------------------------------------------------


def _rows():
    """Sweep rows with known latencies and FIDs: (model, steps, diffusion+recon ms, fid)."""
    table = [
        ("shortcut", 1, 20, 9.0),
        ("shortcut", 2, 40, 6.0),
        ("consistency", 1, 25, 10.0),  # dominated by shortcut@1 (slower and worse)
        ("consistency", 2, 45, 5.0),
        ("consistency", 4, 90, 5.5),  # dominated by consistency@2
        ("teacher", 50, 900, 4.0),
    ]
    return [
        {
            "model": m,
            "method": "teacher" if m == "teacher" else m,
            "sampler": "euler",
            "steps": k,
            "diffusion_ms": ms - 10,
            "recon_ms": 10,
            "render_ms": 1000,  # not part of serving latency
            "fid": f,
        }
        for m, k, ms, f in table
    ]


def test_budget_front_and_pick():
    opts = budget.front(_rows(), "fid", ["shortcut", "consistency", "teacher"])
    assert [(o.student, o.steps) for o in opts] == [
        ("shortcut", 1),
        ("shortcut", 2),
        ("consistency", 2),
        ("teacher", 50),
    ]
    assert [o.latency_ms for o in opts] == [20, 40, 45, 900]
    model = budget.LatencyModel(alpha=1.0)  # keeps the last value: exact figures
    o, why = budget.pick(opts, 50, 0, model, "fid")
    assert (o.student, o.steps) == ("consistency", 2) and why["expected_ms"] == 45
    assert why["server_vs_sweep"] == 1.0 and why["fitting"] == 3
    model.ran(30.0, 2, 20.0)  # a batch of 2 took 30 ms (15 per request), the sweep says 20: x1.5
    o, why = budget.pick(opts, 65, 0, model, "fid")  # consistency@2: 45 x 1.5 = 67.5 > 65
    assert (o.student, o.steps) == ("shortcut", 2) and why["expected_ms"] == 60
    o, why = budget.pick(opts, 65, 2, model, "fid")  # + 2 queued x 15 ms
    assert (o.student, o.steps) == ("shortcut", 1) and why["expected_ms"] == 60
    assert why["queue_ms"] == 30 and why["service_ms"] == 30
    model.finished(8.0)  # time outside queue and compute joins every estimate (60 + 8 > 65)
    o, why = budget.pick(opts, 65, 0, model, "fid")
    assert (o.student, o.steps) == ("shortcut", 1) and why["expected_ms"] == 38
    o, why = budget.pick(opts, 5, 0, model, "fid")
    assert (o.student, o.steps) == ("shortcut", 1) and "nothing" in why["reason"]
    near = [budget.Option("a", 1, 20.0, 9.0), budget.Option("b", 1, 21.0, 6.0)]
    o, why = budget.pick(near, 5, 0, budget.LatencyModel(), "fid")  # b: 5% slower, much better
    assert o.student == "b" and "best of the fastest" in why["reason"]
    assert budget.front(_rows(), "fid", ["shortcut"])[-1].steps == 2  # only servable names


def test_latency_budget_requests(serving, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"rows": _rows()}))
    cfg = serve_config(serving, sweep=str(tmp_path / "results.json"), serve_teacher=False)
    with RunningServer(cfg) as s:
        front = {"shortcut", "consistency"}
        assert set(s.server.registry.pipelines) == front  # the front, preloaded
        body = _ok(s.base, latency_ms=10_000).json()
        assert (body["student"], body["steps"]) == ("consistency", 2)
        assert body["picked"]["reason"].startswith("best fid")
        assert body["picked"]["quality"] == {"fid": 5.0}
        body = _ok(s.base, latency_ms=1).json()
        assert (body["student"], body["steps"]) == ("shortcut", 1)
        assert "nothing on the Pareto front fits" in body["picked"]["reason"]
        r = _ok(s.base, latency_ms=100, student="shortcut")
        assert r.status_code == 422 and "either latency_ms or student" in r.json()["detail"]
        r = _ok(s.base, latency_ms=-5)
        assert r.status_code == 422 and r.json()["detail"].startswith("invalid request: latency")
    # a server default budget applies to requests that name nothing
    cfg.latency_ms = 10_000
    with RunningServer(cfg) as s:
        assert _ok(s.base).json()["picked"]["student"] == "consistency"
        assert _ok(s.base, steps=1).json()["student"] == "shortcut"  # explicit wins


def test_budget_without_sweep_is_explained(live):
    r = _ok(live.base, latency_ms=100)
    assert r.status_code == 409 and "no latency budget possible" in r.json()["detail"]


def test_batch_composition_changes_pixels_at_most_slightly(serving):
    """Documented: the same request gives the same views within a few 1/255 whatever shares
    its batch (bit-identical only for the same batch composition)."""
    from serve.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(serving / "students" / "consistency", serving / "recon")
    images = [decode_image(png(seed=i)) for i in range(4)]
    alone, _, _ = pipe(images[0][None], steps=2, seed=[7])
    batched, _, _ = pipe(torch.stack(images), steps=2, seed=[7, 8, 9, 10])
    assert (alone[0] - batched[0]).abs().max() * 127.5 <= 3
