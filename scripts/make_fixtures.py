"""Tiny random-weight teacher folders in each published family's layout: the same classes,
module names and config keys as the real folders, with scaled-down widths, so that a real folder
differs from its fixture only in sizes and weights. One function per family, listed in FIXTURES.

    python scripts/make_fixtures.py zero123plus OUT_FOLDER

The published layouts (and where they were read) are in teachers/layouts/<family>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Small random weights everywhere (diffusers zero-inits some output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _clip_tokenizer(folder: Path, max_length: int) -> None:
    """A CLIPTokenizer with a 7-token vocabulary (enough for the empty prompt): vocab.json and
    merges.txt as published, plus what this transformers version writes."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"!": 0, "a": 1, "b": 2, "a</w>": 3, "b</w>": 4}
    vocab |= {"<|startoftext|>": 5, "<|endoftext|>": 6}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!",
        model_max_length=max_length,
    )  # fmt: skip
    tok.save_pretrained(folder)


def _image_processor(folder: Path, size: int, mean, std, resample: int) -> None:
    """A CLIPImageProcessor config with the published keys (sizes scaled down)."""
    _write_json(
        folder / "preprocessor_config.json",
        {
            "crop_size": {"height": size, "width": size},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": mean,
            "image_processor_type": "CLIPImageProcessor",
            "image_std": std,
            "resample": resample,
            "rescale_factor": 1 / 255,
            "size": {"shortest_edge": size},
        },
    )


def zero123plus_unet_config(width: int = 8) -> dict:
    """The published SD2-style UNet (4 levels: 3 cross-attention, layers_per_block 2, linear
    projections) with every width divided down; ``width`` = 320 gives the published widths."""
    w = width
    return dict(
        sample_size=12,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(w, 2 * w, 4 * w, 4 * w),
        layers_per_block=2,
        attention_head_dim=(1, 2, 4, 4) if w < 320 else (5, 10, 20, 20),  # heads per level
        cross_attention_dim=2 * w if w < 320 else 1024,
        use_linear_projection=True,
        norm_num_groups=4 if w < 320 else 32,
    )


def zero123plus(out: Path, view_size: int = 16, seed: int = 0) -> Path:
    """A tiny Zero123++ folder: model_index.json naming Zero123PlusPipeline with its
    ramping_coefficients, unet, vae, text_encoder, tokenizer, vision_encoder,
    feature_extractor_clip, feature_extractor_vae, scheduler; plus the lab's multiview.json
    giving the (scaled-down) view size."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(seed)
    out = Path(out)
    tokens = 77  # the published text length (one ramping coefficient per token)
    ucfg = zero123plus_unet_config()
    dim = ucfg["cross_attention_dim"]
    unet = UNet2DConditionModel(**ucfg)
    # two levels instead of four (a 2x VAE, so 16 px views are 8x8 latents); same config keys
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=view_size,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=dim, intermediate_size=2 * dim, num_attention_heads=2,
            num_hidden_layers=2, max_position_embeddings=tokens, vocab_size=7,
            projection_dim=dim, hidden_act="gelu", bos_token_id=5, eos_token_id=6, pad_token_id=0,
        )
    )  # fmt: skip
    vision = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=dim, intermediate_size=2 * dim, num_attention_heads=2,
            num_hidden_layers=2, image_size=view_size, patch_size=4, projection_dim=dim,
            hidden_act="gelu",
        )
    )  # fmt: skip
    for i, m in enumerate((unet, vae, text, vision)):
        _perturb(m, seed + i)
        m.save_pretrained(out / ("unet", "vae", "text_encoder", "vision_encoder")[i])
    _clip_tokenizer(out / "tokenizer", tokens)
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    _image_processor(out / "feature_extractor_clip", view_size, clip_mean, clip_std, 3)
    _image_processor(out / "feature_extractor_vae", view_size, 0.5, 0.8, 2)
    _zero123plus_configs(out, tokens)
    _write_json(out / "multiview.json", {"image_size": view_size})
    return out


def _zero123plus_configs(out: Path, tokens: int) -> None:
    """Zero123++'s scheduler config and model_index.json (with its ramping coefficients)."""
    _write_json(
        out / "scheduler" / "scheduler_config.json",
        {
            "_class_name": "EulerAncestralDiscreteScheduler",
            "_diffusers_version": "0.20.2",
            "beta_end": 0.012,
            "beta_schedule": "linear",
            "beta_start": 0.00085,
            "clip_sample": False,
            "num_train_timesteps": 1000,
            "prediction_type": "v_prediction",
            "set_alpha_to_one": False,
            "skip_prk_steps": True,
            "steps_offset": 1,
            "timestep_spacing": "linspace",
            "trained_betas": None,
        },
    )
    ramp = [round(0.2 + i / (tokens - 1), 4) for i in range(tokens)]  # rises along the tokens
    _write_json(
        out / "model_index.json",
        {
            "_class_name": "Zero123PlusPipeline",
            "_diffusers_version": "0.20.2",
            "feature_extractor_clip": ["transformers", "CLIPImageProcessor"],
            "feature_extractor_vae": ["transformers", "CLIPImageProcessor"],
            "ramping_coefficients": ramp,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "vision_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        },
    )


def mvdream_unet_config(image: bool, width: int = 32) -> dict:
    """The published MultiViewUNetModel config (MVDream / ImageDream, SD 2.1 base) with its widths
    scaled down: ``width`` 320 gives the published values. Tiny: three levels instead of four
    (8x8 latents), one res block per level; the keys are the published ones."""
    full = width >= 320
    cfg = dict(
        image_size=32 if full else 8,
        in_channels=4,
        out_channels=4,
        model_channels=width,
        attention_resolutions=[4, 2, 1] if full else [2, 1],  # the last level has none
        num_res_blocks=2 if full else 1,
        channel_mult=[1, 2, 4, 4] if full else [1, 2, 2],
        num_head_channels=64 if full else 16,
        transformer_depth=1,
        context_dim=1024 if full else width,
        use_checkpoint=False,
        camera_dim=16,
    )
    if image:
        cfg |= {"ip_dim": 16, "frame_num": 5}  # 16 image tokens; 4 views + the condition frame
    return cfg


def _mvdream_folder(out: Path, image: bool, view_size: int, seed: int) -> Path:
    """A tiny MVDream (``image`` False) or ImageDream folder in the published layout."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from teachers.mv_unet import MultiViewUNetModel

    torch.manual_seed(seed)
    out = Path(out)
    ucfg = mvdream_unet_config(image)
    dim, clip_width = ucfg["context_dim"], 24
    unet = MultiViewUNetModel.from_published(ucfg, ip_embedding_dim=clip_width)
    vae = AutoencoderKL(  # two levels instead of four: 16 px views are 8x8 latents
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        sample_size=view_size,
        scaling_factor=0.18215,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=dim, intermediate_size=2 * dim, num_attention_heads=2,
            num_hidden_layers=2, max_position_embeddings=77, vocab_size=7, projection_dim=dim,
            hidden_act="gelu", bos_token_id=5, eos_token_id=6, pad_token_id=0,
        )
    )  # fmt: skip
    parts = {"unet": unet, "vae": vae, "text_encoder": text}
    if image:
        parts["image_encoder"] = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=clip_width, intermediate_size=2 * clip_width, num_attention_heads=2,
                num_hidden_layers=2, image_size=view_size, patch_size=4, hidden_act="gelu",
            )
        )  # fmt: skip
    for i, (name, m) in enumerate(parts.items()):
        _perturb(m, seed + i)
        m.save_pretrained(out / name)
    _clip_tokenizer(out / "tokenizer", 77)
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    if image:
        _image_processor(out / "feature_extractor", view_size, clip_mean, clip_std, 3)
    DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, steps_offset=1, clip_sample=False, set_alpha_to_one=False,
        prediction_type="epsilon",
    ).save_pretrained(out / "scheduler")  # fmt: skip
    none = [None, None]
    _write_json(
        out / "model_index.json",
        {
            "_class_name": ["pipeline_mvdream", "MVDreamPipeline"],
            "_diffusers_version": "0.25.0",
            "feature_extractor": ["transformers", "CLIPImageProcessor"] if image else none,
            "image_encoder": ["transformers", "CLIPVisionModel"] if image else none,
            "requires_safety_checker": False,
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["mv_unet", "MultiViewUNetModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    return out


def mvdream(out: Path, view_size: int = 16, seed: int = 0) -> Path:
    """A tiny MVDream folder (text-conditioned, 4 views as frames, cameras in the UNet)."""
    return _mvdream_folder(out, False, view_size, seed)


def imagedream(out: Path, view_size: int = 16, seed: int = 0) -> Path:
    """A tiny ImageDream folder (MVDream + image tokens, the condition frame, image_encoder/)."""
    return _mvdream_folder(out, True, view_size, seed)


FIXTURES = {
    "zero123plus": zero123plus,
    "mvdream": mvdream,
    "imagedream": imagedream,
}  # family -> its fixture builder


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in FIXTURES:
        print(f"usage: make_fixtures.py {{{','.join(FIXTURES)}}} OUT_FOLDER", file=sys.stderr)
        return 2
    print(FIXTURES[argv[0]](Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
