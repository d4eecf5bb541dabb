"""The README's commands, in README order, as a newcomer runs them on a fresh clone: each runs on
tiny settings (its counts and steps made small) or is skipped with the reason named below. They
run in a fresh working folder that holds the shipped models and configs but no data, so every
default data root starts empty: the commands must not fail on a world mismatch (issue 29: the
load test after the demo asked for the reconstructor's world in the teacher's data folder)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tiny_util import ROOT

SWEEP_TINY = [
    "objects=2",
    "batch=2",
    "latency_repeats=1",
    "throughput_batch=1",
    "set_resamples=50",
    "reference_steps=2",
]


@dataclass
class Run:
    """Run the command with these flags' values replaced and these arguments appended."""

    flags: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    argv: list[str] | None = None  # the command to run instead (setup scripts), else as written

    def tiny(self, argv: list[str]) -> list[str]:
        out = list(self.argv or argv)
        for flag, value in self.flags.items():
            if flag in out:
                out[out.index(flag) + 1] = value
            else:
                out += [flag, value]
        return out + self.extra


@dataclass
class Skip:
    reason: str


LONG = "a long training run (its tiny smoke is tests/**/test_*train*)"
EXTERNAL = "needs a published teacher's folder, which a clone does not hold"
SERVER = "a server that runs until stopped (scripts/load_test.py starts one below)"
# README command prefix -> what the test does with it; every README command must match one
DECISIONS: list[tuple[str, Run | Skip]] = [
    ("./scripts/demo.sh", Run(argv=["distill", "demo"], extra=["steps=[1]", *SWEEP_TINY])),
    ("./scripts/test.sh", Skip("the test suite itself")),
    ("distill data make --split train", Run({"--count": "2"})),
    ("distill data show", Run()),
    ("distill data make --split val", Run({"--count": "1"})),
    ("distill teacher train configs/teacher/tiny.yaml", Run(extra=["data.train_count=4"])),
    ("distill teacher train", Skip(LONG)),
    ("distill teacher sample", Run({"--steps": "2", "--count": "1"})),
    (
        "distill teacher eval --teacher runs/teacher_v3",
        Skip("needs the v3 teacher the two stages above train; its test is test_teacher_targets"),
    ),
    ("distill teacher eval", Run({"--steps": "1", "--count": "2"})),
    ("python scripts/teacher_diagnosis.py", Skip(LONG)),
    ("distill teacher inspect teachers/", Skip(EXTERNAL)),
    ("distill train --method consistency --teacher teachers/", Skip(EXTERNAL)),
    ("distill train --method progressive --teacher teachers/", Skip(EXTERNAL)),
    ("distill recon train teacher=teachers/", Skip(EXTERNAL)),
    ("distill sweep --models teacher,runs/zpp", Skip(EXTERNAL)),
    ("distill serve --students runs/zpp", Skip(EXTERNAL)),
    ("distill bench teacher", Run({"--repeats": "1"})),
    ("distill recon train", Skip(LONG)),
    ("distill recon eval", Run({"--count": "2"})),
    ("distill recon run", Run()),  # on the views.png `teacher sample --views-out` made above
    (
        "distill train --method shortcut",
        Run(
            extra=[
                "out=runs/students/shortcut_readme",  # not over the shipped student
                "train.steps=1",
                "train.batch_size=2",
                "train.warmup=1",
                "data.train_count=2",
                "eval_count=0",
            ]
        ),
    ),
    ("distill sample", Run({"--count": "1"})),
    ("distill compare", Run({"--steps": "1", "--count": "2"})),
    ("./scripts/make_students.sh", Skip(LONG)),
    (
        "python scripts/budget_curves.py",
        Skip("every recipe at 4 budgets; its tiny run is tests/distill/test_budget_curves.py"),
    ),
    (
        "distill metrics calibrate",
        Skip("over an hour here; its tiny run is tests/eval/test_margins.py"),
    ),
    ("distill sweep", Run({"--steps": "1"}, SWEEP_TINY)),
    (
        "ACCELERATE_USE_CPU=1 accelerate launch",
        Skip("two processes; its test is tests/eval/test_sweep_processes.py"),
    ),
    ("distill bench scale", Skip("an hour; its smoke is tests/distill/test_bench_scale.py")),
    (
        "distill bench compile",
        Skip("compiles for minutes; its test is tests/serve/test_compile.py"),
    ),
    ("distill serve", Skip(SERVER)),
    ("curl", Skip("talks to the server above")),
    (
        ".venv/bin/python scripts/load_test.py",
        Run(
            {"--seconds": "1"},
            ["--images", "2", "--clients", "2", "--swap-every", "0.5"]
            + ["--budget-seconds", "1", "--budget-clients", "1"],
        ),
    ),
    ("DISTILL_ADMIN_TOKEN=", Skip("a public server with an admin token")),
    ("apt-get install", Skip("installs a system package (a browser)")),
    (".venv/bin/pytest tests/", Skip("a test file of the suite (runs with the suite)")),
    (".venv/bin/python scripts/page_screenshot.py", Skip("needs a browser; writes docs/")),
]


def readme_commands() -> list[list[str]]:
    """The README's ```bash commands in order, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", "").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                out.append(argv)
    return out


def decide(argv: list[str]) -> Run | Skip:
    line = " ".join(argv)
    for prefix, what in DECISIONS:
        if line.startswith(prefix):
            return what
    raise AssertionError(f"README command without a decision in this test: {line}")


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    cmds = readme_commands()
    assert len(cmds) > 20
    decided = [decide(c) for c in cmds]
    assert sum(isinstance(d, Run) for d in decided) >= 12


def _workdir(tmp: Path) -> Path:
    """A fresh folder as a clone has it for these commands: shipped models and configs (links:
    nothing writes into them), no data, no runs."""
    (tmp / "shipped" / "students").mkdir(parents=True)
    for name in ("teacher", "recon", "encoder"):
        (tmp / "shipped" / name).symlink_to(ROOT / "shipped" / name)
    for st in (ROOT / "shipped" / "students").iterdir():
        (tmp / "shipped" / "students" / st.name).symlink_to(st)
    (tmp / "configs").symlink_to(ROOT / "configs")
    return tmp


def _run(argv: list[str], cwd: Path) -> None:
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if argv[0] == "distill":
        cmd = [sys.executable, "-m", "distill.cli", *argv[1:]]
    else:
        assert argv[0] == ".venv/bin/python", argv
        cmd = [sys.executable, str(ROOT / argv[1]), *argv[2:]]
    import os

    r = subprocess.run(
        cmd, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600
    )
    log = (r.stdout + r.stderr)[-3000:]
    assert "different world" not in log and "data of world" not in log, log
    if "load_test.py" in cmd[1]:  # 1: its throughput targets are not met at tiny settings
        assert r.returncode in (0, 1) and "wrote" in r.stdout, log
    else:
        assert r.returncode == 0, f"{' '.join(argv)}\n{log}"


@pytest.mark.slow
def test_readme_commands_in_order_do_not_collide_on_worlds(tmp_path):
    cwd = _workdir(tmp_path)
    for argv in readme_commands():
        what = decide(argv)
        if isinstance(what, Run):
            _run(what.tiny(argv), cwd)
    worlds = sorted(p.name for p in (cwd / "data").iterdir())
    assert "world" in worlds and "world3" in worlds  # the reconstructor's and the teacher's
