"""The Zero123++ family (v1.1, v1.2 and the models built on it): a stock SD2-style
UNet2DConditionModel driven the way Zero123PlusPipeline drives it.

What one call ``teacher(x_t, t, cond)`` does (facts read from SUDO-AI-3D/zero123plus,
diffusers-support/pipeline.py, and the v1.2 folder's configs as listed in
SoarCraft/Stable123Keypoints, zero123plus_model_structure.md):
  1. image prompt: the CLIP text embedding of "" plus the CLIP image embedding (vision_encoder's
     ``image_embeds``) times ``ramping_coefficients`` (model_index.json), one coefficient per
     token; the null condition (cond = zeros, the lab's CFG branch) gets the text embedding of ""
     alone, as the pipeline's negative prompt;
  2. reference: the condition image normalised by feature_extractor_vae (mean 0.5, std 0.8; the
     null condition is the zero image), VAE-encoded without the scaling factor, noised to the
     same time t, runs through the UNet; its self-attention inputs become extra keys/values of
     the main pass (teachers/reference_attention.py);
  3. the main pass on the 6 views tiled 3 rows x 2 cols, in the UNet's latent space
     z = (vae_latent * scaling_factor - 0.22) * 0.75; images go in scaled by 0.5 / 0.8 and come
     out unscaled by 0.8 / 0.5.
The schedule is the folder's DDPM betas with its prediction type (v-prediction), presented on
the lab's cosine path (teachers/external.py maps timesteps to t); the default grid is
EulerAncestralDiscreteScheduler's with ``timestep_spacing="trailing"`` (the authors' recommended
override, README.md). The lab samples with its own samplers (no ancestral noise).
Departures, deliberate: the reference latent is the VAE posterior mode (the pipeline samples it)
and its noise is one fixed draw (seed REFERENCE_SEED) instead of a fresh draw per call, so the
teacher is a deterministic function, as distillation targets need.
Cameras (README.md, "Camera Parameters"): azimuths 30, 90, ..., 330 relative to the input view;
elevations (absolute) v1.2: 20, -10 alternating; v1.1: 30, -20 alternating; v1.2 field of view
30 degrees. A folder does not say its version: v1.2 is assumed unless multiview.json names the
cameras.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samplers.paths import get_path
from samplers.protocol import file_key
from teachers.base import load_component, read_json, tile_views, untile_views, weights_file
from teachers.external import DiffusersTeacher
from teachers.reference_attention import install_reference_attention, reference_forward

LATENT_SHIFT, LATENT_SCALE = 0.22, 0.75  # pipeline.py scale_latents: (z - 0.22) * 0.75
IMAGE_SCALE = 0.5 / 0.8  # pipeline.py scale_image
ROWS, COLS, VIEW_SIZE = 3, 2, 320  # 640 x 960 output, 3 rows x 2 cols of 320 px views
AZIMUTHS = [30.0, 90.0, 150.0, 210.0, 270.0, 330.0]  # relative to the condition view
ELEVATIONS = {"v1.2": [20.0, -10.0] * 3, "v1.1": [30.0, -20.0] * 3}
REFERENCE_SEED = 0  # the reference latent's fixed noise
DEFAULT_SPACING = "trailing"


def _preprocessor(folder: Path) -> dict:
    """Resize, crop and normalisation of a CLIPImageProcessor folder."""
    cfg = read_json(folder / "preprocessor_config.json", "Zero123++ needs its image processors")

    def side(v, key):
        return int(v[key] if isinstance(v, dict) else v)

    def per_channel(v):
        return [float(x) for x in v] if isinstance(v, list) else [float(v)] * 3

    size = cfg.get("size", 224)
    crop = cfg.get("crop_size", size)
    return {
        "size": side(size, "shortest_edge") if isinstance(size, dict) else int(size),
        "crop": side(crop, "height"),
        "mean": per_channel(cfg.get("image_mean", 0.5)),
        "std": per_channel(cfg.get("image_std", 0.5)),
    }


class Zero123PlusTeacher(DiffusersTeacher):
    """Zero123++ presented as a lab teacher: ``teacher(x_t, t, cond, emb=None)``."""

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        vision_encoder: nn.Module,
        prompt_embeds: Tensor,
        ramp: list[float],
        scheduler_config: dict,
        clip_pre: dict,
        vae_pre: dict,
        image_size: int = VIEW_SIZE,
        weights_key: str = "",
    ):
        super().__init__(unet, scheduler_config, ROWS, COLS, image_size, vae, None, weights_key)
        self.info.kind = "zero123plus"
        self.vision_encoder = vision_encoder
        self.clip_pre, self.vae_pre = clip_pre, vae_pre
        if prompt_embeds.shape[1] != len(ramp):
            raise ValueError(
                f"model_index.json: {len(ramp)} ramping_coefficients for a text embedding of "
                f"{prompt_embeds.shape[1]} tokens"
            )
        self.register_buffer("prompt_embeds", prompt_embeds.float(), persistent=False)
        self.register_buffer("ramp", torch.tensor(ramp, dtype=torch.float32), persistent=False)
        install_reference_attention(self.unet)
        self.reference = True  # False: the plain UNet call (tests pin the difference)
        self._ref_noise: dict[tuple, Tensor] = {}

    # --- the condition ---------------------------------------------------------------------
    @staticmethod
    def _resize(img: Tensor, pre: dict) -> Tensor:
        """Resize the short side to ``size`` (bicubic) and centre-crop ``crop``."""
        x = F.interpolate(img, size=pre["size"], mode="bicubic", align_corners=False)
        top = (x.shape[-2] - pre["crop"]) // 2
        left = (x.shape[-1] - pre["crop"]) // 2
        return x[..., top : top + pre["crop"], left : left + pre["crop"]]

    @staticmethod
    def _normalise(img01: Tensor, pre: dict) -> Tensor:
        mean = img01.new_tensor(pre["mean"])[:, None, None]
        std = img01.new_tensor(pre["std"])[:, None, None]
        return (img01 - mean) / std

    def prompt(self, cond: Tensor, null: Tensor) -> Tensor:
        """Encoder states [B, L, D]: text("") + ramp * CLIP image embedding; text("") alone for
        the null condition."""
        px = self._normalise(self._resize((cond + 1) / 2, self.clip_pre), self.clip_pre)
        with torch.no_grad():  # frozen: a student trains the UNet only
            enc = self.vision_encoder(px.to(self.prompt_embeds.dtype)).image_embeds  # [B, D]
        keep = (~null).to(enc.dtype)[:, None, None]
        image = enc[:, None, :] * self.ramp[None, :, None] * keep
        return self.prompt_embeds.expand(cond.shape[0], -1, -1) + image

    def reference_latent(self, cond: Tensor, null: Tensor) -> Tensor:
        """The clean reference latent [B, 4, h, w]: the VAE posterior mode of the condition image
        normalised by feature_extractor_vae (the zero image for the null condition), unscaled."""
        img = self._normalise(self._resize((cond + 1) / 2, self.vae_pre), self.vae_pre)
        img = torch.where(null[:, None, None, None], torch.zeros_like(img), img)
        return self.vae.encode(img).latent_dist.mode()

    def reference_noise(self, like: Tensor) -> Tensor:
        """One fixed noise draw [1, C, h, w] for the reference latent (seed REFERENCE_SEED)."""
        key = (tuple(like.shape[1:]), like.device, like.dtype)
        if key not in self._ref_noise:
            g = torch.Generator().manual_seed(REFERENCE_SEED)
            noise = torch.randn((1, *like.shape[1:]), generator=g)
            self._ref_noise[key] = noise.to(like.device, like.dtype)
        return self._ref_noise[key]

    # --- the call ----------------------------------------------------------------------------
    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, emb: Tensor | None = None) -> Tensor:
        self.check_inputs(x_t, t, cond)
        b = x_t.shape[0]
        null = cond.flatten(1).abs().amax(1) == 0  # the lab's null condition (CFG)
        states = self.prompt(cond, null).to(x_t)
        if emb is None:
            emb = torch.zeros(b, self.time_embed_dim, device=x_t.device, dtype=x_t.dtype)
        grid = tile_views(x_t, self.rows, self.cols)
        k = self.timesteps(t)
        kw = {"encoder_hidden_states": states, "class_labels": emb}
        if not self.reference:
            return untile_views(self.unet(grid, k, **kw).sample, self.rows, self.cols)
        with torch.no_grad():
            ref0 = self.reference_latent(cond, null).to(x_t)
        path = get_path("cosine")  # noised to the same time as x_t
        a = path.alpha(t.double()).to(x_t)[:, None, None, None]
        s = path.sigma(t.double()).to(x_t)[:, None, None, None]
        ref_t = a * ref0 + s * self.reference_noise(ref0)
        out = reference_forward(self.unet, grid, k, ref_t, **kw)
        return untile_views(out, self.rows, self.cols)

    # --- the latent space ----------------------------------------------------------------
    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        b, v = x.shape[:2]
        z = (x.flatten(0, 1) / LATENT_SCALE + LATENT_SHIFT) / self.scale
        img = self.vae.decode(z).sample / IMAGE_SCALE
        return img.clamp(-1, 1).reshape(b, v, *img.shape[1:])

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        b, v = images.shape[:2]
        img = images.to(self.vae.device, self.vae.dtype).flatten(0, 1) * IMAGE_SCALE
        z = self.vae.encode(img).latent_dist.mode() * self.scale
        z = (z - LATENT_SHIFT) * LATENT_SCALE
        return z.reshape(b, v, *z.shape[1:])

    # --- the schedule ----------------------------------------------------------------------
    def sampling_times(self, steps: int, shift: float = 1.0) -> Tensor:
        """Lab times of EulerAncestralDiscreteScheduler's timesteps with trailing spacing (the
        authors' recommended setting), ending at t = 0 (its final sigma is 0), in float64."""
        if shift != 1.0:
            return super().sampling_times(steps, shift)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        from diffusers import EulerAncestralDiscreteScheduler

        sched = EulerAncestralDiscreteScheduler.from_config(
            self.scheduler_config, timestep_spacing=DEFAULT_SPACING
        )
        sched.set_timesteps(steps)
        k = sched.timesteps.round().long().clamp(0, len(self.log_snr_k) - 1)
        return torch.cat([self.time_of_timestep(k), torch.zeros(1, dtype=torch.float64)])

    # --- the folder --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Zero123PlusTeacher:
        """Load a Zero123++ folder (model_index.json naming Zero123PlusPipeline); the folder is
        classified first and refused with the reason when the lab cannot honour it."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

        from teachers.families import classify

        folder = Path(folder)
        fam = classify(folder)
        if fam.name != "zero123plus":
            raise ValueError(f"{folder}: a {fam.name} folder, not Zero123++ ({fam.found})")
        index = read_json(folder / "model_index.json", "")
        unet = load_component(UNet2DConditionModel, folder / "unet")
        vae = load_component(AutoencoderKL, folder / "vae")
        vision = load_component(CLIPVisionModelWithProjection, folder / "vision_encoder")
        text = load_component(CLIPTextModel, folder / "text_encoder")
        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        ids = tok(
            "", padding="max_length", max_length=tok.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        with torch.no_grad():
            prompt = text(ids)[0]  # the SD pipeline's prompt embedding (last hidden state)
        sched = read_json(folder / "scheduler" / "scheduler_config.json", "")
        mv = fam.multiview
        model = cls(
            unet,
            vae,
            vision,
            prompt,
            list(index["ramping_coefficients"]),
            sched,
            _preprocessor(folder / "feature_extractor_clip"),
            _preprocessor(folder / "feature_extractor_vae"),
            image_size=int(mv.get("image_size", VIEW_SIZE)),
            weights_key=file_key(weights_file(folder / "unet")),
        )
        model.views = list(
            zip(mv.get("azimuths", AZIMUTHS), mv.get("elevations", ELEVATIONS["v1.2"]))
        )
        model.record = {"family": "zero123plus", "multiview": mv}
        return model.eval()
