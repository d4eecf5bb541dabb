"""Contact sheets: labelled rows of images in one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402


def contact_sheet(
    rows: list[tuple[str, Tensor, list[str] | None]],
    out: str | Path,
    title: str | None = None,
    cell: float = 1.3,
) -> Path:
    """Save rows of images ([N, 3, H, W] in [-1, 1]) with a row label and optional captions."""
    ncols = max(r[1].shape[0] for r in rows)
    fig, axes = plt.subplots(
        len(rows),
        ncols,
        figsize=(cell * ncols + 1.2, cell * len(rows) + (0.5 if title else 0.1)),
        squeeze=False,
    )
    for r, (label, imgs, captions) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < imgs.shape[0]:
                ax.imshow(((imgs[c].detach().float().cpu() + 1) / 2).clamp(0, 1).permute(1, 2, 0))
                if captions:
                    ax.set_title(captions[c], fontsize=7)
        axes[r][0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
