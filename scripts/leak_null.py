"""Is a sweep's small positive leak a leak? A null check on its cached cells; no model runs.

Every cell of a sweep stores each object's back read (``cells/*.pt``). With the objects' true
back classes (a function of the object's seed and the world version only), per cell:

- ``leak_prior``: the sweep's figure, accuracy minus the chance ``p[read]`` under the known
  back-class distribution;
- ``leak_own_shares``: the same with these objects' own back-class shares as the chance; the
  difference is the part that comes from the sample's shares differing from the prior (the
  cells share their objects, so it is common to all of them);
- ``perm_p``: the reads shuffled across the objects that read a class (each read class and each
  true class kept, their pairing broken); the share of shuffles with at least the observed hits.

Writes ``leak_null.json`` and ``leak_null.md`` (default: into the sweep folder).

    .venv/bin/python scripts/leak_null.py docs/sweep --permutations 20000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from eval.unseen import leak
from scenes.objects import back_class
from scenes.world import WorldConfig, back_class_probs, split_seed


def leak_null(read: torch.Tensor, truth: torch.Tensor, permutations: int, seed: int = 0) -> dict:
    """read, truth [N] (read: a class index, or < 0 for unreadable / disagree) of the objects
    whose back the unseen side reads. Figures as the module docstring says."""
    probs = back_class_probs().double()
    own = torch.bincount(truth, minlength=len(probs)).double() / len(truth)
    m = read >= 0
    r, t = read[m], truth[m]
    hits = int((r == t).sum())
    g = torch.Generator().manual_seed(seed)
    null = torch.tensor(
        [int((r == t[torch.randperm(len(t), generator=g)]).sum()) for _ in range(permutations)]
    )
    return {
        "objects": len(read),
        "read": int(m.sum()),
        "hits": hits,
        "null_hits_mean": float(null.double().mean()),
        "leak_prior": float(leak(read, truth, probs).mean()),
        "leak_own_shares": float(leak(read, truth, own).mean()),
        "perm_p": float((1 + (null >= hits).sum()) / (1 + permutations)),
        "own_shares": [round(float(x), 4) for x in own],
    }


def sweep_cells(folder: Path) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
    """(cell figures, per-object back reads, per-object leak) of every cell in ``folder/cells``
    that read the unseen side."""
    out = []
    for js in sorted((folder / "cells").glob("*.json")):
        per = torch.load(js.with_name(js.name[: -len(".json")] + ".pt"), weights_only=False)["per"]
        if "back_read" in per:
            out.append((json.loads(js.read_text()), per["back_read"], per["unseen_leak"]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="a sweep folder (results.json, cells/)")
    ap.add_argument("--permutations", type=int, default=20000)
    ap.add_argument("--out", default=None, help="folder for leak_null.{json,md} (the sweep's)")
    args = ap.parse_args(argv)
    folder = Path(args.sweep)
    meta = json.loads((folder / "results.json").read_text())["meta"]
    if meta["world_version"] < 2:
        raise SystemExit(f"{folder}: world version {meta['world_version']} has no back classes")
    world = WorldConfig(version=meta["world_version"])
    truth = torch.tensor(
        [back_class(split_seed(meta["split"], i), world) for i in range(meta["objects"])]
    )
    rows = []
    for cell, read, per_leak in tqdm(sweep_cells(folder), desc="cells", unit="cell"):
        if len(read) != len(truth):
            raise SystemExit(
                f"{cell['model']}@{cell['steps']}: {len(read)} objects, meta says {len(truth)}"
            )
        keep = ~torch.isnan(per_leak)  # the objects whose back the unseen side reads
        row = {k: cell[k] for k in ("model", "sampler", "steps")}
        row.update(leak_null(read[keep], truth[keep], args.permutations))
        if abs(row["leak_prior"] - float(per_leak[keep].mean())) > 1e-9:
            raise SystemExit(
                f"{row['model']}@{row['steps']}: the true back classes rebuilt here "
                "do not give the sweep's own leak figure; wrong split or world?"
            )
        rows.append(row)
    if not rows:
        raise SystemExit(f"{folder / 'cells'}: no cell read the unseen side (no back_read)")
    out = Path(args.out or folder)
    out.mkdir(parents=True, exist_ok=True)
    res = {
        "sweep": str(folder),
        "eval_set": meta["eval_set"],
        "world_version": world.version,
        "permutations": args.permutations,
        "rows": rows,
    }
    (out / "leak_null.json").write_text(json.dumps(res, indent=2))
    lines = [
        f"# Leak null check: {folder} ({meta['eval_set']}, world {world.version})",
        "",
        f"`leak prior`: the sweep's leak; `leak own shares`: chance from these objects' own"
        f" back-class shares; `perm p`: {args.permutations} shuffles of the reads across the"
        " objects that read a class. Command: `.venv/bin/python scripts/leak_null.py "
        f"{folder} --permutations {args.permutations}`.",
        "",
        "Back-class shares of the objects whose back is read (first cell): "
        + ", ".join(f"{x:.3f}" for x in rows[0]["own_shares"])
        + "; the prior: "
        + ", ".join(f"{x:.3f}" for x in back_class_probs().tolist())
        + ".",
        "",
        "| model | sampler | steps | objects | read | hits | null hits | leak prior |"
        " leak own shares | perm p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['objects']} | {r['read']} |"
            f" {r['hits']} | {r['null_hits_mean']:.1f} | {r['leak_prior']:+.4f} |"
            f" {r['leak_own_shares']:+.4f} | {r['perm_p']:.4f} |"
        )
    (out / "leak_null.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
