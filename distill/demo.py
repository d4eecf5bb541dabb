"""`distill demo`: the lab's main job on the shipped defaults, small enough for a laptop."""

from __future__ import annotations

from pathlib import Path

from distill import data_cmd


def demo(out: str, args: list[str]) -> None:
    """Make a small world dataset and a preview contact sheet."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_cmd.make("val", 50, [f"root={out_dir / 'data'}", *args])
    data_cmd.show(10_000_000, str(out_dir / "sheet.png"), args)
