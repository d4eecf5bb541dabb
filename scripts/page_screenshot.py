"""The README's screenshot of the try-it page, taken against the shipped models.

Starts `distill serve` on the shipped defaults (the README's serve command, on a free loopback
port), loads the teacher too (an activation, then the default again), opens the page in headless
Chromium and compares teacher@50 with what a latency budget picks, on one test-split object
and seed; saves docs/serve/page.png. Needs chromium and chromedriver
(apt-get install -y chromium chromium-driver) and selenium (pip install -e '.[dev]').

    .venv/bin/python scripts/page_screenshot.py [--budget-ms 40] [--out docs/serve/page.png]
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the lab, and the page driver tests/page_util.py
import page_util  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def condition_png(index: int, out: Path) -> Path:
    """The condition image of a test-split object of the shipped models' world, as a PNG
    (made from its seed: no data folder is read or written)."""
    from PIL import Image

    from recon.model import Reconstructor
    from scenes.model_views import folders_world
    from scenes.samples import make_samples
    from scenes.world import split_seed

    recon = Reconstructor.from_pretrained(ROOT / "shipped/recon")
    students = ROOT / "shipped/students"  # the served students' world, not the reconstructor's
    world = folders_world(sorted(p for p in students.iterdir() if p.is_dir()), recon.cfg.image_size)
    cond = make_samples([split_seed("test", index)], world)["cond"][0]
    arr = ((cond.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    out.write_bytes(buf.getvalue())
    return out


def start_server(port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distill.cli", "serve", "--students", "shipped/students",
           "--reconstructor", "shipped/recon", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the server did not start within 600 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs/serve/page.png"))
    ap.add_argument("--image", default="", help="a PNG/JPEG (default: a test-split object)")
    ap.add_argument("--index", type=int, default=3, help="which test-split object")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-ms", type=float, default=40.0, help="choice B's latency budget")
    args = ap.parse_args()
    found = page_util.find_browser()
    if isinstance(found, str):
        raise SystemExit(found)
    with tempfile.TemporaryDirectory() as tmp:
        image = (
            Path(args.image) if args.image else condition_png(args.index, Path(tmp) / "object.png")
        )
        port = free_port()
        proc = start_server(port)
        base = f"http://127.0.0.1:{port}"
        try:
            default = httpx.get(base + "/healthz").json()["active"]
            for name in ("teacher", default):  # load the teacher; keep the default active
                r = httpx.post(f"{base}/v1/students/{name}/activate", timeout=600)
                r.raise_for_status()
            driver = page_util.chrome()
            try:
                page_util.open_page(driver, base)
                page_util.upload(driver, image)
                page_util.set_compare(driver, True)
                page_util.choose(driver, "A", "teacher", steps=50)
                page_util.choose(driver, "B", budget_ms=args.budget_ms)
                page_util.set_seed(driver, args.seed)
                page_util.run(driver, timeout=600)
                error = page_util.error_text(driver)
                if error:
                    raise SystemExit(f"the page shows an error: {error}")
                for tag in ("A", "B"):
                    s = page_util.shown(driver, tag)
                    print(f"{tag}: {s['student']}@{s['steps']} {s['took']}; "
                          f"turntable {s['timings'].get('turntable')}")  # fmt: skip
                    if s["picked"]:
                        print(f"   {s['picked']}")
                time.sleep(0.5)  # a turntable frame or two further
                out = page_util.screenshot(driver, Path(args.out))
                print(f"wrote {out}")
            finally:
                driver.quit()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
