"""`distill teacher inspect FOLDER`: what a teacher folder is, or why the lab refuses it."""

from __future__ import annotations

from teachers.describe import describe


def inspect_teacher(folder: str) -> dict:
    """Print the folder's family, parametrization, schedule, latent space, grid, cameras,
    condition and view order (a refused folder raises ValueError with the reason)."""
    facts = describe(folder)
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        print(f"{key:>{width}}: {value}")
    return facts
