"""The sweep's Pareto plot: quality vs what a user waits for (image -> views -> Gaussians)."""

from __future__ import annotations

from pathlib import Path


def _label(r: dict) -> str:
    return r["model"] if r["method"] != "teacher" else f"teacher ({r['sampler']})"


PANELS = (
    ("seen_psnr", "seen-side PSNR, dB (higher is better)"),
    ("fid", "FID, lab encoder (lower is better)"),
    ("sharpness", "sharpness vs truth (1.0 = truth)"),
)


def pareto_plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in PANELS if rows and rows[0].get(k) is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_label(r), []).append(r)
    for ax, (key, title) in zip(axes[0], panels):
        for label, rs in sorted(groups.items()):
            rs = sorted(rs, key=lambda r: r["total_ms"])
            xs, ys = [r["total_ms"] for r in rs], [r[key] for r in rs]
            err = [r.get(key + "_ci95") or 0.0 for r in rs]
            style = "k--" if label.startswith("teacher") else "-"
            line = ax.errorbar(xs, ys, yerr=err, fmt=style, marker="o", capsize=2, label=label)
            colour = line[0].get_color()
            for r, x, y in zip(rs, xs, ys):
                ax.annotate(
                    str(r["steps"]),
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                    color=colour,
                )
        if key == "sharpness":
            ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("image -> views -> Gaussians, ms per object (log; batch 1)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    dev = rows[0]["device"] if rows else ""
    n = rows[0]["objects"] if rows else 0
    fig.suptitle(
        f"labels = sampling steps; error bars = 95% intervals over {n} objects; {dev}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
