"""Load any reconstructor folder through one call: the lab's (recon.json + model.safetensors) or
an LGM folder (a released weights file, with or without the lab's lgm.json)."""

from __future__ import annotations

from pathlib import Path

from recon.base import GaussianReconstructor
from recon.lgm import CONFIG_FILE, WEIGHT_FILES


def reconstructor_kind(folder: str | Path) -> str:
    """'lab' or 'lgm' by what ``folder`` holds; a clear error naming what it found otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such reconstructor folder")
    if (folder / "recon.json").exists():
        return "lab"
    if (folder / CONFIG_FILE).exists() or any((folder / n).exists() for n in WEIGHT_FILES):
        return "lgm"
    names = sorted(p.name for p in folder.iterdir())
    found = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    raise ValueError(
        f"{folder}: not a reconstructor folder (found {found or 'nothing'}); expected the lab's "
        f"recon.json + model.safetensors, or LGM's {' or '.join(WEIGHT_FILES)} (optionally "
        f"with {CONFIG_FILE})"
    )


def load_reconstructor(folder: str | Path) -> GaussianReconstructor:
    """The reconstructor saved in ``folder``, in eval mode, on the CPU."""
    kind = reconstructor_kind(folder)
    if kind == "lab":
        from recon.model import Reconstructor

        return Reconstructor.from_pretrained(folder)
    from recon.lgm import LGMReconstructor

    return LGMReconstructor.from_pretrained(folder)
