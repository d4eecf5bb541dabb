"""Equivalence margins per verdict metric, derived from a reference model's own outputs.

`distill metrics calibrate` degrades the reference cell's outputs (teacher@50 on val objects by
default) with the calibration's degradations at the calibration's levels, and measures each
metric's paired effect at that operating point (eval/calibrate.py). This module turns those
effects into one margin per metric, writes ``margins.json`` and ``margins.md``, and reads them
back for the sweep (fixed before the sweep runs; the sweep records the file's key).

The rule (MARGIN_RULE, also written into margins.md):

- A degradation counts for a metric only if the metric claims to see it (calibrate.CLAIMS).
- *Wrong way*: if at any level the metric's paired 95% interval excludes zero on the side the
  claim calls better (blur raising a fidelity figure), the metric is **not a verdict metric for
  that degradation**: a student with that defect would look equal or better, so the effect is
  no yardstick; the reason is recorded and the degradation gives no margin.
- *Undetected*: a degradation none of whose levels the metric resolves (interval includes zero)
  gives no margin either: the metric cannot see it on this many objects.
- Otherwise the degradation's effect is |difference| at its **smallest detected level**: the
  calibration's smallest levels (noise std 0.02, blur 0.5 px, colour shift 0.02, one object in
  eight with averaged or collapsed backs or an inconsistent view) are the mildest defects the
  lab tests for, i.e. the smallest ones a user would care about.
- The margin is the **smallest** such effect over the degradations the metric counts: two
  cells are called equivalent only when their difference is ruled out from reaching the mildest
  defect of any kind the metric sees. Taking the smallest keeps the word honest; a larger
  margin would let a student carry a defect the metric can see and still be "equivalent".
- A metric with no usable degradation has no margin: the sweep gives its intervals only.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from eval.stats import excludes_zero

MARGINS_FILE = "margins.json"

# metrics that may carry a margin: the sweep's verdict metrics, the sharpness figures and the
# view-0 seen figure (the per-metric claims are eval/calibrate.py's CLAIMS)
MARGIN_METRICS = (
    "seen_psnr",
    "seen_psnr_view0",
    "sharpness",
    "sharpness_log_error",
    "hf_correlation",
    "unseen_dist",
    "consistency_psnr",
    "fid",
)

MARGIN_RULE = (
    "A degradation counts for a metric when the metric claims to see it. If at any level the"
    " metric's paired 95% interval excludes zero on the wrong side (the defect makes the figure"
    " look better, e.g. blur raising a fidelity figure), the metric is not a verdict metric for"
    " that degradation. A degradation none of whose levels the metric resolves gives no margin"
    " either. Otherwise its effect is |difference| at its smallest detected level (the"
    " calibration's smallest levels are the mildest defects the lab tests: the smallest a user"
    " would care about). The margin is the smallest effect over the degradations that count, so"
    " that *equivalent* rules out the mildest defect of every kind the metric sees."
)


def _kind_effect(rows: list[dict], metric: str, direction: str) -> dict:
    """How ``metric`` responds to one degradation's levels (rows sorted by level)."""
    sign = 1 if direction == "up" else -1
    wrong, detected = None, None
    for r in rows:
        d, h = r.get(f"{metric}_diff"), r.get(f"{metric}_diff_ci95", float("nan"))
        if d is None or d != d:
            continue
        if excludes_zero(d, h) and sign * d < 0 and wrong is None:
            wrong = (r["level"], d, h)
        if excludes_zero(d, h) and sign * d > 0 and detected is None:
            detected = (r["level"], d, h)
    if wrong is not None:
        lv, d, h = wrong
        return {
            "status": "wrong_way",
            "level": lv,
            "diff": d,
            "ci95": h,
            "reason": f"moves the wrong way at level {lv:g} ({d:+.3g} ± {h:.2g}; claimed"
            f" {direction}): not a verdict metric for this degradation",
        }
    if detected is None:
        return {"status": "undetected", "reason": "no level resolved (interval includes zero)"}
    lv, d, h = detected
    return {"status": "used", "level": lv, "diff": d, "ci95": h, "effect": abs(d)}


def derive_margins(rows: list[dict], claims: dict, metrics=MARGIN_METRICS) -> dict:
    """Per metric: its margin (or None with the reason) and each claimed degradation's status,
    from calibration rows on the reference's outputs (``kind``, ``level``, ``<m>_diff``,
    ``<m>_diff_ci95``: paired differences to the undegraded outputs)."""
    out = {}
    for m in metrics:
        kinds = {}
        for kind, direction in claims.get(m, {}).items():
            rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["level"])
            if not rs:
                continue
            kinds[kind] = {"direction": direction, **_kind_effect(rs, m, direction)}
        used = {k: v for k, v in kinds.items() if v["status"] == "used"}
        if used:
            k = min(used, key=lambda k: used[k]["effect"])
            entry = {"margin": used[k]["effect"], "from": {"kind": k, **used[k]}}
        else:
            why = "; ".join(f"{k}: {v['reason']}" for k, v in kinds.items()) or "no claims"
            entry = {"margin": None, "reason": f"no degradation gives a margin ({why})"}
        out[m] = {**entry, "kinds": kinds}
    return out


def _fmt(x) -> str:
    return "-" if x is None or x != x else f"{x:.4g}"


def run_time(meta: dict) -> str:
    """The run's wall time, saying when part of the work was read back from the cache."""
    if "seconds" not in meta:
        return "time not recorded"
    t = f"{meta['seconds'] / 60:.1f} min"
    if meta.get("resumed_cases"):
        t += (
            f" in the run that finished ({meta['resumed_cases']} of {meta['cases']} cases read"
            " back from the cache of an earlier, stopped run)"
        )
    return t


def margins_md(doc: dict) -> str:
    """margins.md: the reference, the rule, and per metric how its margin was derived."""
    meta = doc["meta"]
    lines = [
        "# Equivalence margins",
        "",
        f"Made by `distill metrics calibrate` from {meta['reference']} on {meta['split']}"
        f" ({meta['objects']} objects), {meta['created']}, {run_time(meta)}. Each degradation"
        " of the calibration (`calibration.md`) is applied to the reference's own outputs at"
        " the calibration's levels; the effect is the paired difference to its undegraded"
        " outputs on the same objects, with its 95% half-width. The sweep reads"
        " `margins.json` before it runs and names its key in the report.",
        "",
        f"Rule: {MARGIN_RULE}",
        "",
        "| metric | operating point | margin | derived from | degradations (effect at the"
        " smallest detected level, or why not counted) |",
        "|---|---|---|---|---|",
    ]
    op = doc.get("operating_point", {})
    for m, e in doc["margins"].items():
        src = e.get("from")
        derived = (
            f"{src['kind']} {src['level']:g}: {src['diff']:+.3g} ± {src['ci95']:.2g}"
            if src
            else "none: intervals only"
        )
        parts = []
        for k, v in e["kinds"].items():
            if v["status"] == "used":
                parts.append(f"{k} ({v['direction']}): {v['diff']:+.3g} at {v['level']:g}")
            elif v["status"] == "wrong_way":
                parts.append(f"{k}: **{v['reason']}**")
            else:
                parts.append(f"{k}: {v['reason']}")
        lines.append(
            f"| {m} | {_fmt(op.get(m))} | {_fmt(e['margin'])} | {derived} |"
            f" {'; '.join(parts) or '-'} |"
        )
    wrong = [
        f"- {m} is not a verdict metric for {k}: {v['reason'].split(':')[0]}"
        for m, e in doc["margins"].items()
        for k, v in e["kinds"].items()
        if v["status"] == "wrong_way"
    ]
    lines += ["", "## Not a verdict metric for these degradations", ""]
    lines += wrong or ["- none: every metric moves the claimed way under every degradation"]
    lines += [
        "",
        "Levels: noise = pixel std in [0, 1] units; blur = Gaussian sigma in pixels; colour ="
        " RGB shift (+s, 0, -s) on object pixels; averaging, collapse and inconsistency = the"
        " share of objects with the failure (the back colour moved halfway to another class's;"
        " object 0's back class; view 1 from another object).",
        "",
    ]
    return "\n".join(lines)


def write_margins(out: Path, doc: dict) -> None:
    """Write margins.json and margins.md into ``out``."""
    (out / MARGINS_FILE).write_text(json.dumps(doc, indent=2))
    (out / "margins.md").write_text(margins_md(doc))


@dataclass
class Margins:
    """Margins read from a margins file: the values, the metrics without one, the file's key."""

    path: str
    key: str  # sha256 of the file's bytes (16 hex digits)
    reference: str
    values: dict[str, float] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)  # metric -> why it has no margin
    world: dict | None = None  # the world the reference was measured on (meta.world), if recorded
    world_version: int | None = None  # files without meta.world: the split description's version

    def world_mismatch(self, world) -> str | None:
        """Why these margins do not apply to an evaluation on ``world`` (a WorldConfig): they
        were derived on another world (its id where the file records the world, else its
        version); None when they apply or the file does not say."""
        from scenes.world import other_recorded_world, world_name

        theirs = other_recorded_world(self.world, world)
        if theirs is not None:
            return (
                f"{self.path} was derived on {world_name(theirs)}, this evaluation runs on"
                f" {world_name(world)}: re-derive it there (distill metrics calibrate)"
            )
        if self.world_version not in (None, world.version):  # set only without meta.world
            return (
                f"{self.path} was derived on world version {self.world_version}, this evaluation"
                f" runs on world version {world.version}: re-derive it there (distill metrics"
                " calibrate)"
            )
        return None

    def describe(self) -> dict:
        return {
            "path": self.path,
            "key": self.key,
            "reference": self.reference,
            "values": self.values,
            "excluded": self.excluded,
        }


def load_margins(path: str | Path) -> Margins | None:
    """The margins at ``path``; None when there is no file. A malformed file is an error."""
    p = Path(path)
    if not str(path) or not p.is_file():
        return None
    raw = p.read_bytes()
    try:
        doc = json.loads(raw)
        entries = doc["margins"]
        reference = doc["meta"]["reference"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{p}: not a margins file (want meta.reference and margins): {e}") from e
    values, excluded = {}, {}
    for m, e in entries.items():
        v = e.get("margin")
        if v is None:
            excluded[m] = e.get("reason", "no margin")
        elif not (isinstance(v, (int, float)) and v > 0):
            raise ValueError(f"{p}: margin of {m} must be a number > 0, got {v!r}")
        else:
            values[m] = float(v)
    key = hashlib.sha256(raw).hexdigest()[:16]
    world = doc["meta"].get("world")
    found = None if world else re.search(r"world version (\d+)", str(doc["meta"].get("split", "")))
    version = int(found.group(1)) if found else None
    return Margins(str(p), key, reference, values, excluded, world, version)
