"""Reading an LGM folder: the released weights file as downloaded (huggingface ashawkey/LGM),
with or without the lab's lgm.json, checked key by key against the architecture."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

IGNORED_PREFIXES = ("lpips_loss.",)  # training-only keys LGM's own state_dict drops


def find_weights(folder: Path, info: dict) -> Path:
    """The weights file: lgm.json's ``weights`` entry, else the one released name present."""
    from recon.lgm import WEIGHT_FILES

    if "weights" in info:
        path = folder / info["weights"]
        if not path.exists():
            raise FileNotFoundError(f"{path} not found (named by {folder / 'lgm.json'})")
        return path
    found = [folder / n for n in WEIGHT_FILES if (folder / n).exists()]
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise FileNotFoundError(
            f"{folder}: an LGM folder holds exactly one of {', '.join(WEIGHT_FILES)} (found "
            f"{what}); with several, name one in lgm.json's 'weights'"
        )
    return found[0]


def read_config(folder: Path):
    """(LGMConfig, lgm.json's dict or {}) for ``folder``; option set 'big' without lgm.json."""
    from recon.lgm import CONFIG_FILE, WEIGHT_FILES, lgm_config

    meta = folder / CONFIG_FILE
    info = json.loads(meta.read_text()) if meta.exists() else {}
    weights = find_weights(folder, info)
    cfg = dict(info.get("config", {}))
    options = cfg.pop("options", info.get("options", "big"))
    cfg.setdefault("rotation_normalisation", WEIGHT_FILES.get(weights.name, "gaussian_axis"))
    try:
        return lgm_config(options, **cfg), info, weights
    except (TypeError, ValueError) as e:
        raise ValueError(f"{meta}: bad LGM config ({e})") from e


def check_layout(model, sd_shapes: dict[str, tuple], path: Path, options: str) -> None:
    """Raise naming the first differences when the file's keys or shapes are not the model's."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: s for k, s in sd_shapes.items() if not k.startswith(IGNORED_PREFIXES)}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    shape = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[:3]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} of another shape (e.g. {k}: {have[k]} vs {want[k]})")
        raise ValueError(
            f"{path}: not the LGM '{options}' layout: " + "; ".join(parts) + ". Name the option "
            "set in lgm.json ('options') if this is another LGM size"
        )


def load_lgm(cls, folder: Path, dtype: torch.dtype):
    """Build the architecture of ``folder``'s config and load its weights, checked."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such LGM folder")
    cfg, info, path = read_config(folder)
    model = cls(cfg)
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            check_layout(model, shapes, path, cfg.options)
            sd = {k: f.get_tensor(k).to(dtype) for k in shapes if k in model.state_dict()}
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: corrupt or unreadable weights file ({e})") from e
    model.load_state_dict(sd)
    model.to(dtype)
    model.record = {"kind": "lgm", "weights": path.name, **info, "config": vars(cfg).copy()}
    model.weights_path = path
    return model.eval()
