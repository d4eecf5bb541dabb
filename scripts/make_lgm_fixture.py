"""A tiny random-weight folder in the layout of the released LGM checkpoint (huggingface
ashawkey/LGM): the same module tree and key names as option set 'big' (recon/lgm_layout.json),
scaled-down channels and image size, so that tests load it exactly as they would the real one.

    .venv/bin/python scripts/make_lgm_fixture.py OUT_DIR [--size 16] [--fixrot]
    .venv/bin/python scripts/make_lgm_fixture.py --layout   # rewrite recon/lgm_layout.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.lgm import LGMReconstructor, lgm_config  # noqa: E402

LAYOUT = Path(__file__).resolve().parents[1] / "recon" / "lgm_layout.json"
SOURCE = {
    "checkpoint": "huggingface ashawkey/LGM model_fp16.safetensors (and model_fp16_fixrot)",
    "read_from": "3DTopia/LGM at fe8d12c: core/unet.py (module tree), core/models.py (UNet(9, "
    "14) + conv 1x1), core/options.py (config_defaults['big'])",
    "cross_check": "2026-12-01: the reference core/unet.py UNet built on the meta device with "
    "the 'big' options gives the same 374 unet keys and shapes as recon/lgm_unet.py (and the "
    "two on a shared tiny config agree to 1e-7 on random weights)",
}


def layout(options: str = "big") -> list[tuple[str, list[int]]]:
    """[key, shape] of the full-size architecture's state dict, built on the meta device."""
    with torch.device("meta"):
        model = LGMReconstructor(lgm_config(options))
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def write_layout(path: Path = LAYOUT) -> None:
    """Write the published 'big' layout, with where it was read."""
    keys = layout("big")
    n = sum(int(torch.Size(s).numel()) for _, s in keys)
    head = {**SOURCE, "options": "big", "parameters": n, "fp16_bytes": 2 * n}
    lines = [f"  {json.dumps(k)}: {json.dumps(s)}" for k, s in keys]  # one key per line
    text = json.dumps(head, indent=1)[:-2] + ',\n "keys": {\n' + ",\n".join(lines) + "\n }\n}\n"
    path.write_text(text)


# 'big' has 6 down blocks and 5 up blocks (Gaussians at half the input size); the fixture keeps
# that ratio with 3 and 2, attention on the deeper levels as 'big' does
TINY = dict(
    down_channels=[16, 32, 32],
    down_attention=[False, True, True],
    mid_attention=True,
    up_channels=[32, 32],
    up_attention=[True, False],
    heads=4,
    norm_groups=8,
)


def make_lgm_fixture(
    folder: str | Path, size: int = 16, rotation: str = "gaussian_axis", seed: int = 0
) -> Path:
    """Write a tiny LGM-layout folder (fp16 weights + lgm.json) at ``size`` px per view."""
    torch.manual_seed(seed)
    cfg = lgm_config("big", input_size=size, splat_size=size // 2, **TINY)
    cfg.rotation_normalisation = rotation
    model = LGMReconstructor(cfg)
    with torch.no_grad():  # small weights: outputs stay in the activations' useful ranges
        for p in model.parameters():
            p.mul_(0.5)
    model.save_pretrained(folder, record={"fixture": "scripts/make_lgm_fixture.py"})
    return Path(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?")
    ap.add_argument("--layout", action="store_true", help=f"rewrite {LAYOUT.name}")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--fixrot", action="store_true", help="the fixed rotation activation")
    a = ap.parse_args()
    if a.layout:
        write_layout()
        return
    if a.out is None:
        ap.error("give OUT_DIR or --layout")
    rot = "per_gaussian" if a.fixrot else "gaussian_axis"
    print(make_lgm_fixture(a.out, a.size, rot))


if __name__ == "__main__":
    main()
