import json
import subprocess
import sys

from distill.cli import main


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for cmd in ("data", "bench", "demo"):
        assert cmd in out


def test_data_make_and_show(tmp_path, capsys):
    args = ["world.image_size=16", "world.gaussians=96"]
    assert (
        main(["data", "make", "--split", "val", "--count", "3", "--root", str(tmp_path), *args])
        == 0
    )
    assert "wrote 3 val objects" in capsys.readouterr().out
    assert (tmp_path / "val" / "manifest.json").exists()
    assert main(["data", "show", "--seed", "4", "--out", str(tmp_path / "s.png"), *args]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_unknown_key_is_a_clear_error(tmp_path, capsys):
    code = main(["data", "make", "--count", "1", "--root", str(tmp_path), "world.sizee=3"])
    assert code == 2
    assert "unknown config key 'world.sizee'" in capsys.readouterr().err


def test_bench_render_quick(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.cli",
            "bench",
            "render",
            "--quick",
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    case = rep["cases"][0]
    for k in ("gaussians", "cameras", "size", "dense_s", "tiled_s", "speedup", "peak_mb"):
        assert k in case
    assert case["dense_s"] > 0 and case["tiled_s"] > 0
