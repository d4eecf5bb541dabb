"""Refuse before guessing: a teacher folder is classified into a family the lab fully
understands, or refused with what was found and what is unsupported.

Families:
  lab          teacher.json (kind lab): the lab's own teacher (teachers/lab.py)
  diffusers    a stock UNet2DModel / UNet2DConditionModel with unet/, scheduler/, optional vae/,
               image_encoder/ and multiview.json, no custom pipeline (teachers/external.py)
  zero123plus  model_index.json naming Zero123PlusPipeline (teachers/zero123pp.py)
  mvdream / imagedream  model_index.json naming MVDreamPipeline or a MultiViewUNetModel unet
               (teachers/mvdream.py; imagedream when it has an image encoder)
Nothing here loads weights: only configs are read, so ``distill teacher inspect`` is cheap.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from teachers.base import read_json

GENERIC_PARTS = ("unet", "scheduler", "vae", "image_encoder")
ZERO123PLUS_PARTS = {  # component -> class (model_index.json of sudo-ai/zero123plus-v1.2)
    "vae": "AutoencoderKL",
    "text_encoder": "CLIPTextModel",
    "tokenizer": "CLIPTokenizer",
    "unet": "UNet2DConditionModel",
    "scheduler": None,  # any DDPM-family scheduler: only its betas and prediction type are used
    "vision_encoder": "CLIPVisionModelWithProjection",
    "feature_extractor_clip": "CLIPImageProcessor",
    "feature_extractor_vae": "CLIPImageProcessor",
}
ZERO123PLUS_SIGNS = ("vision_encoder", "feature_extractor_vae", "feature_extractor_clip")
MVDREAM_UNET = "MultiViewUNetModel"
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
KEY_NOTES = {  # why an unknown UNet config key cannot be honoured
    "ramping_coefficients": "an image prompt ramp inside the UNet (Hunyuan3D-1's modified "
    "Zero123++ UNet): the lab's reference-attention adapter does not implement it",
}


@dataclass
class Family:
    name: str  # lab, diffusers, zero123plus, mvdream, imagedream
    found: str  # what identified it, in words
    multiview: dict = field(default_factory=dict)  # multiview.json ({} if absent)


def _refuse(folder: Path, found: str, why: str) -> ValueError:
    return ValueError(f"{folder}: refused: found {found}; {why}")


def _class_name(entry) -> str:
    """The class of a model_index.json entry: ``"Name"`` or ``[library, "Name"]``."""
    if isinstance(entry, (list, tuple)):
        return str(entry[-1]) if entry and entry[-1] is not None else ""
    return str(entry or "")


def _multiview(folder: Path) -> dict:
    p = folder / "multiview.json"
    return read_json(p, "") if p.exists() else {}


def unknown_unet_keys(cfg: dict) -> list[str]:
    """Keys of a unet/config.json that its diffusers class does not take."""
    import diffusers

    cls = getattr(diffusers, cfg.get("_class_name", ""), None)
    if cls is None:
        return []
    known = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return sorted(k for k in cfg if not k.startswith("_") and k not in known)


def _check_unet_keys(folder: Path, cfg: dict) -> None:
    bad = unknown_unet_keys(cfg)
    if bad:
        notes = "; ".join(f"{k}: {KEY_NOTES[k]}" for k in bad if k in KEY_NOTES)
        raise _refuse(
            folder,
            f"unet/config.json keys {', '.join(bad)} that {cfg['_class_name']} does not take",
            (notes + "; " if notes else "")
            + "a UNet config the lab cannot honour is never sampled half-understood",
        )


def classify(folder: str | Path) -> Family:
    """The family of a teacher folder, or a ValueError naming what was found and why not."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher folder {folder} does not exist")
    meta = folder / "teacher.json"
    if meta.exists():
        kind = read_json(meta, "").get("kind", "lab")
        if kind == "lab":
            return Family("lab", "teacher.json (kind lab)")
        if kind != "diffusers":
            raise ValueError(f"{meta}: unknown teacher kind {kind!r}; valid: lab, diffusers")
    mv = _multiview(folder)
    index_path = folder / "model_index.json"
    if not index_path.exists():
        return _generic(folder, None, mv)
    index = read_json(index_path, "")
    pipe = _class_name(index.get("_class_name"))
    unet_cls = _class_name(index.get("unet"))
    if pipe == "Zero123PlusPipeline":
        return _zero123plus(folder, index, mv)
    if pipe == "MVDreamPipeline" or unet_cls == MVDREAM_UNET:
        name = "imagedream" if _class_name(index.get("image_encoder")) else "mvdream"
        return Family(name, f"model_index.json: {pipe or '?'} with a {unet_cls} unet", mv)
    import diffusers

    if not hasattr(diffusers, pipe):
        raise _refuse(
            folder,
            f"model_index.json naming the custom pipeline class {pipe!r}",
            "the lab knows Zero123PlusPipeline, MVDreamPipeline and diffusers' own pipelines; "
            "a custom pipeline's extra steps would be silently skipped",
        )
    return _generic(folder, index, mv)


def _generic(folder: Path, index: dict | None, mv: dict) -> Family:
    """A stock diffusers UNet the generic adapter uses in full, or refused."""
    signs = [p for p in ZERO123PLUS_SIGNS if (folder / p).is_dir()]
    if signs:
        raise _refuse(
            folder,
            f"Zero123++ components ({', '.join(p + '/' for p in signs)}) without a "
            "model_index.json naming Zero123PlusPipeline",
            "the generic adapter would sample it without reference attention or the ramped image "
            "prompt (wrong views); restore model_index.json with its ramping_coefficients",
        )
    parts = [
        p.name for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith((".", "_"))
    ]
    if index is not None:
        parts = sorted(set(parts) | {k for k, v in index.items() if _is_component(v)})
    extra = [p for p in parts if p not in GENERIC_PARTS]
    if extra:
        raise _refuse(
            folder,
            f"components {', '.join(extra)}",
            f"the generic diffusers adapter uses only {', '.join(GENERIC_PARTS)}; a component it "
            "would ignore changes what the model computes",
        )
    ucfg = read_json(folder / "unet" / "config.json", "a diffusers teacher needs unet/config.json")
    _check_unet_keys(folder, ucfg)
    what = f"{ucfg.get('_class_name')} in unet/"
    if index is not None:
        what += f", model_index.json: {_class_name(index.get('_class_name'))}"
    return Family("diffusers", what, mv)


def _is_component(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and v[1] is not None


def _zero123plus(folder: Path, index: dict, mv: dict) -> Family:
    """Zero123PlusPipeline's folder as published, with nothing the adapter cannot honour."""
    found = "model_index.json naming Zero123PlusPipeline"
    missing = [p for p in ZERO123PLUS_PARTS if not _is_component(index.get(p))]
    missing += [p for p in ZERO123PLUS_PARTS if p not in missing and not (folder / p).is_dir()]
    if missing:
        raise _refuse(folder, found, f"it lacks the components {', '.join(missing)}")
    for part, want in ZERO123PLUS_PARTS.items():
        got = _class_name(index[part])
        if want is not None and got != want:
            raise _refuse(folder, f"{found} with {part} {got}", f"Zero123++'s {part} is {want}")
    extra = [k for k, v in index.items() if _is_component(v) and k not in ZERO123PLUS_PARTS]
    if extra:
        raise _refuse(
            folder, f"{found} with extra components {', '.join(extra)}",
            "the Zero123++ adapter runs the base model only (no ControlNet or other add-on)",
        )  # fmt: skip
    ramp = index.get("ramping_coefficients")
    if not isinstance(ramp, list) or not ramp or not all(isinstance(r, (int, float)) for r in ramp):
        raise _refuse(folder, found, "model_index.json has no ramping_coefficients list")
    ucfg = read_json(folder / "unet" / "config.json", "Zero123++ needs unet/config.json")
    _check_unet_keys(folder, ucfg)
    _check_zero123plus_unet(folder, ucfg)
    sched = read_json(folder / "scheduler" / "scheduler_config.json", "Zero123++ needs a scheduler")
    ptype = sched.get("prediction_type", "epsilon")
    if sched.get("_class_name") in FLOW_SCHEDULERS or ptype not in PREDICTION_TYPES:
        raise _refuse(
            folder, f"scheduler {sched.get('_class_name')} ({ptype})",
            "Zero123++ is a DDPM-family model (v-prediction); valid prediction types: "
            + ", ".join(PREDICTION_TYPES),
        )  # fmt: skip
    _check_multiview(folder, mv, 3, 2)
    return Family("zero123plus", found, mv)


def _check_zero123plus_unet(folder: Path, cfg: dict) -> None:
    def no(what: str, why: str) -> ValueError:
        return _refuse(folder, f"unet/config.json {what}", why)

    for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type"):
        if cfg.get(key) is not None:
            raise no(f"{key}={cfg[key]!r}", "Zero123++'s UNet has no extra embedding inputs")
    if cfg.get("time_cond_proj_dim") is not None:
        raise no("time_cond_proj_dim", "a guidance-embedding UNet is not Zero123++'s")
    vae = read_json(folder / "vae" / "config.json", "Zero123++ needs vae/config.json")
    lat = vae.get("latent_channels", 4)
    if cfg.get("in_channels") != lat or cfg.get("out_channels") != lat:
        raise no(
            f"in_channels={cfg.get('in_channels')}, out_channels={cfg.get('out_channels')}",
            f"Zero123++ denoises the {lat} VAE latent channels only (the condition enters by "
            "reference attention, not concatenation)",
        )
    oca = cfg.get("only_cross_attention", False)
    if oca is True or (isinstance(oca, list) and any(oca)):
        raise no("only_cross_attention", "reference attention needs self-attention layers")
    if not any("CrossAttn" in b for b in cfg.get("down_block_types", [])):
        raise no("without transformer blocks", "reference attention has no self-attention to enter")


def _check_multiview(folder: Path, mv: dict, rows: int, cols: int) -> None:
    if not mv:
        return
    if (int(mv.get("rows", rows)), int(mv.get("cols", cols))) != (rows, cols):
        raise _refuse(
            folder, f"multiview.json grid {mv.get('rows')}x{mv.get('cols')}",
            f"this family's grid is {rows}x{cols}",
        )  # fmt: skip
    for key in ("azimuths", "elevations"):
        if key in mv and len(mv[key]) != rows * cols:
            raise _refuse(
                folder, f"multiview.json with {len(mv[key])} {key}",
                f"the {rows}x{cols} grid has {rows * cols} views",
            )  # fmt: skip
