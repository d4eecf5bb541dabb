"""The students a server can run: their cards, loading, the active one and its hot swap, and the
(student, steps) a request gets. Knows nothing of HTTP: each refusal is one exception class below,
whose message is what the client reads; serve/app.py maps the classes to status codes.

Students load off the request path (in a loader thread) and the active pointer is swapped
atomically. Overlapping activations take effect in the order they were asked for: one that
finishes after a newer one already took effect is refused (``Superseded``) and changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from serve import budget
from serve.config import TOKEN_ENV, ServeConfig
from serve.metrics import UNKNOWN, ServeMetrics
from serve.pipeline import TEACHER_STEPS, Pipeline
from serve.request import public_message


class RegistryError(Exception):
    """A request the registry refuses; ``str(e)`` is the message for the client."""


class UnknownStudent(RegistryError):
    """A name that is neither a readable student nor the served teacher."""

    def __init__(self, name: str, known: list[str]):
        super().__init__(f"unknown student {name!r}; available: {known}")


class NotLoaded(RegistryError):
    """A known student that is not loaded (requests do not load students)."""

    def __init__(self, name: str):
        super().__init__(
            f"student {name!r} is not loaded; activate it first (POST /v1/students/{name}/activate)"
        )


class UnsupportedSteps(RegistryError):
    """A step count the student does not support (the pipeline's message names the ones it does)."""


class LoadFailed(RegistryError):
    """A student folder that cannot be loaded; the active student keeps serving."""

    def __init__(self, name: str, error: BaseException):
        super().__init__(f"cannot load student {name!r}: {public_message(error)}")


class Superseded(RegistryError):
    """An activation that finished after a newer one took effect."""

    def __init__(self, name: str, active: str):
        super().__init__(
            f"activation of {name!r} superseded by a newer activation "
            f"({active!r} is active); {name!r} stays loaded but inactive"
        )


class BudgetAndChoice(RegistryError):
    """A request giving both a latency budget and a student or step count."""

    def __init__(self):
        super().__init__("give either latency_ms or student/steps, not both")


class NoBudget(RegistryError):
    """A latency budget with no loaded student on the sweep's Pareto front."""

    def __init__(self, sweep: str):
        super().__init__(
            "no latency budget possible: no sweep results with a loaded student on their "
            f"Pareto front (sweep: {Path(sweep).name or 'none'})"
        )


class NotAuthorized(RegistryError):
    """An admin request without the configured bearer token."""

    def __init__(self):
        super().__init__(
            "admin route: send 'Authorization: Bearer <token>' with the server's admin token"
        )


def sweep_verdicts(meta: dict, name: str) -> dict:
    """A student's comparisons with the sweep's reference as the sweep decided them
    (eval/verdicts.py): each *equivalent*, *different* or *inconclusive* against the margins
    the sweep read, or an interval only (verdict None) where it had no margin; and what they
    rest on (the margins file and its key, or that there was none)."""
    mg = meta.get("margins") or {}
    if mg.get("values"):
        basis = {
            "margins": mg.get("path"),
            "key": mg.get("key"),
            "reference": meta.get("reference"),
        }
    else:
        basis = {"margins": None, "note": "no margins: intervals only, no verdicts"}
    keep = ("steps", "sampler", "metric", "verdict", "side", "diff", "ci95", "margin")
    mine = [
        {k: v.get(k) for k in keep + ("objects_to_decide",)}
        for v in meta.get("reference_verdicts", [])
        if v.get("model") == name
    ]
    for v in mine:  # how many objects would decide: inconclusive only; a side: different only
        if v["verdict"] != "inconclusive":
            v.pop("objects_to_decide")
        if v["verdict"] != "different":
            v.pop("side")
    return {"verdicts": mine, "verdict_basis": basis}


class Registry:
    def __init__(self, cfg: ServeConfig, metrics: ServeMetrics):
        self.cfg, self.metrics = cfg, metrics
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")
        self.lock = threading.Lock()
        self.pipelines: dict[str, Pipeline] = {}
        self.teacher = None
        self.token = cfg.admin_token or os.environ.get(TOKEN_ENV, "")
        self.tickets = self.applied = 0  # activation requests asked / the newest that took effect
        self._warned: set[str] = set()
        results = self._sweep_results()
        self.sweep, self.sweep_meta = results.get("rows", []), results.get("meta", {})
        names = self.known()
        first = cfg.default or (names[0] if names else "")
        if not first:
            raise FileNotFoundError(f"no readable student folders under {cfg.students}")
        if first not in names:
            raise FileNotFoundError(str(UnknownStudent(first, names)))
        self.active = first
        self.pipelines[first] = self._load(first)
        self.metrics.set_active(first)
        self.front = budget.front(self.sweep, cfg.budget_quality, names)
        if cfg.preload_front:
            for o in self.front:
                if o.student not in self.pipelines:
                    self.pipelines[o.student] = self._load(o.student)

    # --- cards --------------------------------------------------------------------------------
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

    def _teacher_dir(self, cards: dict[str, dict] | None = None) -> str:
        """The teacher folder: the config's, else the first readable card's (``cards``: the
        readable cards when the caller has just read them)."""
        if self.cfg.teacher:
            return self.cfg.teacher
        for card in (self.cards()[0] if cards is None else cards).values():
            return card["teacher_dir"]
        return "shipped/teacher"

    def _sweep_results(self) -> dict:
        """The sweep's results.json (rows and meta), or an empty one."""
        p = Path(self.cfg.sweep)  # "" (no sweep) is the directory "."
        if not p.is_file():
            return {}
        try:
            res = json.loads(p.read_text())
            return res if isinstance(res, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            print(f"ignoring unreadable sweep results {p}: {e}", file=sys.stderr)
            return {}

    def describe(self) -> list[dict]:
        """Every student (and the teacher if served) with its card and sweep rows; broken ones."""
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
                    **sweep_verdicts(self.sweep_meta, name),
                }
            )
        out += [{"name": n, "broken": True, "error": e} for n, e in broken.items()]
        return out

    # --- loading and swapping -----------------------------------------------------------------
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
        if self.cfg.compile:
            pipe.compile()
        size = pipe.image_size
        pipe(torch.zeros(1, 3, size, size), steps=pipe.default_steps, seed=0)  # warm-up
        return pipe

    def get(self, name: str | None) -> Pipeline:
        """The loaded pipeline of ``name`` (default: the active one)."""
        with self.lock:
            name = name or self.active
            pipe = self.pipelines.get(name)
        if pipe is None:
            known = self.known()
            raise UnknownStudent(name, known) if name not in known else NotLoaded(name)
        return pipe

    async def activate(self, name: str) -> Pipeline:
        """Load ``name`` if needed (in the loader thread) and make it the active student."""
        known = self.known()
        if name not in known:
            raise UnknownStudent(name, known)
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
                raise LoadFailed(name, e) from None
        with self.lock:
            self.pipelines[name] = pipe
            if ticket < self.applied:
                raise Superseded(name, self.active)
            self.applied, self.active = ticket, name
            self.metrics.swaps.inc()
            self.metrics.set_active(name)
        return pipe

    def check_admin(self, authorization: str) -> None:
        """Admin actions: ``authorization`` (the header's value) must carry the bearer token,
        when one is configured."""
        if not self.token:
            return  # loopback-only server (see serve.listen.serve())
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            self.metrics.error("unauthorized")
            raise NotAuthorized()

    # --- choosing what to run -----------------------------------------------------------------
    def choose(
        self,
        student: str | None,
        steps: int | None,
        latency_ms: float | None,
        pending: int,
        latency: budget.LatencyModel,
    ):
        """(pipeline, steps, why) for a request: by name and steps, or by a latency budget
        (``pending``: requests queued or running; ``latency``: the server's latency model)."""
        if latency_ms is None and student is None and steps is None and self.cfg.latency_ms > 0:
            latency_ms = self.cfg.latency_ms
        if latency_ms is None:
            pipe = self.get(student)
            try:
                return pipe, pipe.check_steps(steps), None
            except ValueError as e:
                raise UnsupportedSteps(str(e)) from None
        if student is not None or steps is not None:
            raise BudgetAndChoice()
        with self.lock:
            options = [o for o in self.front if o.student in self.pipelines]
        if not options:
            raise NoBudget(self.cfg.sweep)
        o, why = budget.pick(options, latency_ms, pending, latency, self.cfg.budget_quality)
        return self.get(o.student), o.steps, {"student": o.student, "steps": o.steps, **why}
