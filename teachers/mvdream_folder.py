"""Read an MVDream / ImageDream folder: check its layout, load its parts, say what it holds.

The layout (teachers/layouts/mvdream.json and imagedream.json, with where each fact was read):
model_index.json naming MVDreamPipeline and a MultiViewUNetModel unet; unet/, vae/,
text_encoder/, tokenizer/, scheduler/; ImageDream adds image_encoder/ and feature_extractor/.
An optional lab file, multiview.json, may set the views (``azimuths``, ``elevations``), the
view size (``image_size``), the text (``prompt``, ``negative_prompt``) and ``recon_views``.
Anything else this code does not implement is refused with what was found.
"""

from __future__ import annotations

from pathlib import Path

import torch

from teachers.base import load_component, read_json, weights_file
from teachers.mv_unet import MultiViewUNetModel, build_kwargs

AZIMUTHS = (0.0, 90.0, 180.0, 270.0)  # the pipeline's views, in frame order
ELEVATION = 0.0  # the pipeline's default elevation (LGM calls it with 0)
CLIP_MEAN, CLIP_STD = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)  # CLIPImageProcessor's
CLIP_WIDTH = 1280  # the published resampler's input: CLIP ViT-H/14 hidden states
MULTIVIEW_KEYS = (
    "azimuths",
    "elevations",
    "image_size",
    "prompt",
    "negative_prompt",
    "recon_views",
)
DDPM_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler")


def _class_of(entry) -> str | None:
    """The class named by a model_index.json entry ([library, class] or a bare class name)."""
    if isinstance(entry, (list, tuple)):
        return entry[-1] if entry else None
    return entry


def read_spec(folder: Path) -> dict:
    """The folder's configs, checked: family, UNet config, scheduler, views, image size, text."""
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher folder {folder} does not exist")
    index = read_json(folder / "model_index.json", "an MVDream/ImageDream folder needs it")
    pipe = _class_of(index.get("_class_name"))
    unet_cls = _class_of(index.get("unet"))
    if pipe != "MVDreamPipeline" or unet_cls != "MultiViewUNetModel":
        raise ValueError(
            f"{folder / 'model_index.json'}: pipeline {pipe!r} with unet {unet_cls!r} is not the "
            "MVDream/ImageDream layout (MVDreamPipeline with a MultiViewUNetModel)"
        )
    ucfg = read_json(folder / "unet" / "config.json", "the multi-view UNet's config")
    if ucfg.get("_class_name") != "MultiViewUNetModel":
        raise ValueError(
            f"{folder / 'unet' / 'config.json'}: _class_name {ucfg.get('_class_name')!r} is not "
            "MultiViewUNetModel"
        )
    build_kwargs(ucfg, str(folder / "unet" / "config.json"))
    if ucfg.get("camera_dim") != 16:
        raise ValueError(
            f"{folder / 'unet' / 'config.json'}: camera_dim {ucfg.get('camera_dim')!r}; the "
            "family feeds every frame a flattened 4x4 camera (camera_dim 16)"
        )
    family = "imagedream" if ucfg.get("ip_dim", 0) > 0 else "mvdream"
    need = ["vae", "text_encoder", "tokenizer", "scheduler"]
    need += ["image_encoder"] if family == "imagedream" else []
    missing = [d for d in need if not (folder / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder}: a {family} folder needs {', '.join(missing)}/")
    sched = read_json(folder / "scheduler" / "scheduler_config.json", "the DDPM schedule")
    if sched.get("_class_name") not in DDPM_SCHEDULERS:
        raise ValueError(
            f"{folder / 'scheduler' / 'scheduler_config.json'}: {sched.get('_class_name')!r} "
            f"is not a DDPM-family scheduler ({', '.join(DDPM_SCHEDULERS)})"
        )
    vcfg = read_json(folder / "vae" / "config.json", "the AutoencoderKL's config")
    down = 2 ** (len(vcfg.get("block_out_channels", [0])) - 1)
    mv = _multiview(folder)
    views = _views(folder, mv, family, ucfg)
    image_size = int(mv.get("image_size", ucfg["image_size"] * down))
    return {
        "family": family,
        "unet": ucfg,
        "scheduler": sched,
        "vae": vcfg,
        "multiview": mv,
        "views": views,
        "image_size": image_size,
        "prompt": mv.get("prompt", ""),
        "negative_prompt": mv.get("negative_prompt", ""),
    }


def _multiview(folder: Path) -> dict:
    if not (folder / "multiview.json").exists():
        return {}
    mv = read_json(folder / "multiview.json", "")
    unknown = sorted(set(mv) - set(MULTIVIEW_KEYS))
    if unknown:
        raise ValueError(
            f"{folder / 'multiview.json'}: unknown keys {unknown}; "
            f"valid: {', '.join(MULTIVIEW_KEYS)}"
        )
    return mv


def _views(folder: Path, mv: dict, family: str, ucfg: dict) -> list[tuple[float, float]]:
    az = [float(a) for a in mv.get("azimuths", AZIMUTHS)]
    el = mv.get("elevations", [ELEVATION] * len(az))
    if len(el) != len(az):
        raise ValueError(
            f"{folder / 'multiview.json'}: {len(az)} azimuths but {len(el)} elevations"
        )
    frames = len(az) + (family == "imagedream")
    if "frame_num" in ucfg and ucfg["frame_num"] != frames:
        raise ValueError(
            f"{folder / 'unet' / 'config.json'}: frame_num {ucfg['frame_num']} but {len(az)} "
            f"views{' + the condition frame' if family == 'imagedream' else ''} make {frames}"
        )
    return [(a, float(e)) for a, e in zip(az, el)]


@torch.no_grad()
def encode_prompts(folder: Path, prompts: list[str]) -> torch.Tensor:
    """The text encoder's last hidden states [len(prompts), 77, D] (padded to max length)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    enc = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt")  # fmt: skip
    mask = ids.attention_mask if getattr(enc.config, "use_attention_mask", False) else None
    return enc.eval()(ids.input_ids, attention_mask=mask)[0].float()


def clip_input(folder: Path) -> dict:
    """The feature extractor's resize, crop and normalisation (CLIP's defaults without one)."""
    f = folder / "feature_extractor" / "preprocessor_config.json"
    p = read_json(f, "") if f.exists() else {}

    def side(v, key):
        return int(v[key] if isinstance(v, dict) else v)

    return {
        "size": side(p.get("size", 224), "shortest_edge"),
        "crop": side(p.get("crop_size", 224), "height"),
        "mean": tuple(p.get("image_mean", CLIP_MEAN)),
        "std": tuple(p.get("image_std", CLIP_STD)),
    }


def load_unet(folder: Path, config: dict, ip_embedding_dim: int) -> MultiViewUNetModel:
    """The UNet with its weights (float32); a weights file that does not fit is a ValueError."""
    from safetensors.torch import load_file

    unet = MultiViewUNetModel.from_published(config, ip_embedding_dim)
    wf = weights_file(folder)
    try:
        sd = load_file(str(wf))
    except Exception as e:
        raise ValueError(f"{wf}: corrupt or unreadable weights file ({e})") from e
    try:
        unet.load_state_dict({k: v.float() for k, v in sd.items()})
    except RuntimeError as e:
        raise ValueError(f"{wf}: weights do not match {folder / 'config.json'} ({e})") from e
    return unet


def load_parts(folder: Path) -> dict:
    """MVDreamTeacher's constructor arguments and record for ``folder``."""
    from diffusers import AutoencoderKL

    spec = read_spec(folder)
    enc, width = None, CLIP_WIDTH
    if spec["family"] == "imagedream":
        from transformers import CLIPVisionModel

        enc = CLIPVisionModel.from_pretrained(folder / "image_encoder", local_files_only=True)
        enc = enc.float().eval()
        width = enc.config.hidden_size
    unet = load_unet(folder / "unet", spec["unet"], width)
    text = encode_prompts(folder, [spec["prompt"], spec["negative_prompt"]])
    from samplers.protocol import file_key

    init = dict(
        unet=unet,
        scheduler_config=spec["scheduler"],
        vae=load_component(AutoencoderKL, folder / "vae"),
        context=text[0],
        negative_context=text[1],
        views=spec["views"],
        image_size=spec["image_size"],
        image_encoder=enc,
        clip_input=clip_input(folder),
        weights_key=file_key(weights_file(folder / "unet")),
    )
    record = {k: spec[k] for k in ("family", "multiview", "prompt", "negative_prompt")}
    record["views"] = [list(v) for v in spec["views"]]
    return {"init": init, "record": record}


def describe_folder(folder: Path) -> dict:
    """The family's facts for ``distill teacher inspect`` (read from the configs, no weights)."""
    spec = read_spec(folder)
    u, s, v = spec["unet"], spec["scheduler"], spec["vae"]
    image = spec["family"] == "imagedream"
    n = len(spec["views"])
    condition = (
        "text prompt through cross-attention (the condition image is not used)"
        if not image
        else f"image: {u['ip_dim']} CLIP image tokens (resampled penultimate hidden states) "
        "read by every cross-attention through to_k_ip/to_v_ip, and the clean condition latent "
        "as an extra frame with a zero camera; text prompt through cross-attention"
    )
    return {
        "family": spec["family"],
        "parametrization": f"{s.get('prediction_type', 'epsilon')} (lab: cosine path, "
        "timesteps mapped by equal log SNR)",
        "schedule": f"{s.get('_class_name')} {s.get('beta_schedule')} "
        f"{s.get('beta_start')}..{s.get('beta_end')}, {s.get('num_train_timesteps')} steps, "
        f"steps_offset {s.get('steps_offset')}, set_alpha_to_one {s.get('set_alpha_to_one')}",
        "latent_space": f"AutoencoderKL, {v.get('latent_channels')} channels, "
        f"{2 ** (len(v['block_out_channels']) - 1)}x down, scaling {v.get('scaling_factor')}",
        "grid": f"{n} views as frames of one batch (num_frames {n + image}), no tiling; "
        f"self-attention spans all frames",
        "image_size": spec["image_size"],
        "cameras": {
            "views": [{"azimuth": a, "elevation": e} for a, e in spec["views"]],
            "convention": "camera-to-world 4x4 flattened (camera_dim 16), OpenGL camera axes, "
            "unit distance, z-up world with azimuth 0 on -y and 90 on +x (MVDream's y-up "
            "world turned by (x, y, z) -> (x, -z, y)); converted from the lab's OpenCV cameras",
        },
        "condition": condition,
        "guidance": "unconditional branch: negative prompt, zero image tokens, zero latent",
        "view_order": "frame order = azimuths as listed (0, 90, 180, 270 by default); LGM "
        "reorders them to 90, 180, 270, 0",
        "prompt": spec["prompt"],
    }


def key_patterns(keys) -> list[str]:
    """State-dict keys with the indices of repeated blocks written as # (input/output blocks,
    transformer blocks, resampler layers): equal for every size of the same architecture."""
    import re

    pat = re.compile(
        r"((?:input_blocks|output_blocks|transformer_blocks|image_embed\.layers)\.)\d+"
    )
    return sorted({pat.sub(r"\1#", k) for k in keys})
