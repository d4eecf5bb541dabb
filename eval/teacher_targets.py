"""The lab teacher's targets (issue: teacher v3 on world 3) decided from its 50-step row of the
quality axis, each three-way at the lab's level: *met* when the one-sided test passes, *not met*
when the opposite one does, else *inconclusive*.

- view-0 seen PSNR >= 25 dB, and >= 3 dB above copying the condition (paired, same objects);
- sharpness equivalent to 1 within the sharpness margin (two one-sided tests, eval/stats.py);
- unseen side: back reads consistent with the known distribution (the goodness-of-fit test does
  not reject it) and no leak (per-object accuracy not above chance at the 95% bound);
- FID no worse than a reference teacher's (non-inferiority within the FID margin; the two sets
  are different objects, so the interval is the unpaired one).
"""

from __future__ import annotations

import math

from eval.stats import ALPHA, EQUIVALENT, Z95, _normal_sf, verdict

MET, NOT_MET, INCONCLUSIVE = "met", "not met", "inconclusive"
SEEN_PSNR_DB = 25.0
ABOVE_COPY_DB = 3.0


def at_least(value: float, half: float, threshold: float, alpha: float = ALPHA) -> str:
    """``value`` (95% half-width ``half``) >= ``threshold``: one-sided tests each way."""
    if half != half or half <= 0:
        return INCONCLUSIVE
    se = half / Z95
    if _normal_sf((value - threshold) / se) <= alpha:
        return MET
    if _normal_sf((threshold - value) / se) <= alpha:
        return NOT_MET
    return INCONCLUSIVE


def no_worse(diff: float, half: float, margin: float, alpha: float = ALPHA) -> str:
    """A lower-is-better difference (new - reference, half-width ``half``) is below ``margin``
    (non-inferiority, one-sided); *not met* when it is above the margin by the opposite test."""
    return at_least(-diff, half, -margin, alpha)


def teacher_targets(row: dict, margins: dict, reference: dict | None) -> list[dict]:
    """The targets of a 50-step ``row`` (eval.views.step_quality: figures with ``_ci95``, the
    paired ``vs_copy_psnr_view0`` and the unseen side's test results); ``margins``: metric ->
    margin (docs/metrics/margins.json); ``reference``: the reference teacher's 50-step row for
    FID (None: that target is reported missing)."""
    n = int(row.get("objects", 0))
    out = []

    def add(target, figure, decision, note=""):
        out.append({"target": target, "figure": figure, "verdict": decision, "note": note})

    v, h = row["seen_psnr_view0"], row["seen_psnr_view0_ci95"]
    add(
        f"view-0 seen PSNR >= {SEEN_PSNR_DB:g} dB",
        f"{v:.2f} ± {h:.2f} dB",
        at_least(v, h, SEEN_PSNR_DB),
    )
    d, hd = row["vs_copy_psnr_view0"], row["vs_copy_psnr_view0_ci95"]
    add(
        f">= {ABOVE_COPY_DB:g} dB above copying the condition (paired)",
        f"{d:+.2f} ± {hd:.2f} dB (copy {row['copy_psnr_view0']:.2f} dB)",
        at_least(d, hd, ABOVE_COPY_DB),
    )
    if "sharpness" in margins:
        s, hs, m = row["sharpness"], row["sharpness_ci95"], margins["sharpness"]
        if verdict(s - 1.0, hs, m, n).verdict == EQUIVALENT:
            decision = MET
        else:  # not met when |sharpness - 1| exceeds the margin by the one-sided test
            decision = NOT_MET if no_worse(abs(s - 1.0), hs, m) == NOT_MET else INCONCLUSIVE
        add(f"sharpness within ±{m:.3f} of 1 (equivalence)", f"{s:.3f} ± {hs:.3f}", decision)
    else:
        add("sharpness within its margin of 1", "n/a", INCONCLUSIVE, "no sharpness margin")
    if "unseen_fit_p" in row:
        p = row["unseen_fit_p"]
        add(
            "unseen-side reads fit the known distribution",
            f"goodness of fit p = {p:.3g} ({row.get('unseen_objects', '?')} objects)",
            MET if p >= ALPHA else NOT_MET,
            "met when the test does not reject the known distribution at 5%",
        )
        add(
            "no leak: per-object accuracy at chance",
            "leaks" if row["unseen_leaks"] else "no leak at the 95% bound",
            NOT_MET if row["unseen_leaks"] else MET,
        )
    else:
        add("unseen side", "n/a", INCONCLUSIVE, "the world draws no known backs (version 1)")
    if reference is None or reference.get("fid") is None or row.get("fid") is None:
        add("FID no worse than the reference teacher", "n/a", INCONCLUSIVE, "no reference FID")
    elif "fid" not in margins:
        add("FID no worse than the reference teacher", "n/a", INCONCLUSIVE, "no FID margin")
    else:
        diff = row["fid"] - reference["fid"]
        half = math.hypot(row["fid_ci95"], reference["fid_ci95"])  # independent object sets
        add(
            f"FID no worse than the reference (margin {margins['fid']:.3g})",
            f"{row['fid']:.2f} vs {reference['fid']:.2f}: {diff:+.2f} ± {half:.2f}",
            no_worse(diff, half, margins["fid"]),
            "unpaired: the two teachers are measured on different objects",
        )
    return out


def targets_markdown(targets: list[dict], title: str) -> str:
    lines = [title, "", "| target | measured | verdict | note |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['figure']} | {t['verdict']} | {t['note']} |" for t in targets]
    return "\n".join(lines) + "\n"
