"""Adapter for diffusers-format multi-view teachers loaded from a local folder (never the network).

Folder layout (as diffusers pipelines save them):
  unet/                   UNet2DModel or UNet2DConditionModel (config.json + weights)
  scheduler/scheduler_config.json   prediction_type, beta schedule / flow-matching scheduler
  vae/        (optional)  AutoencoderKL: the views live in its latent space
  image_encoder/ (optional) transformers CLIPVisionModelWithProjection for cross-attention
  multiview.json (optional) {"rows": 3, "cols": 2, "image_size": 32,
                            "azimuths": [30, 90, ...], "elevations": [20, -10, ...]}
                          (the cameras of the views in grid order; a student is trained on
                          world data rendered from them; optional "recon_views": the indices
                          of the views the reconstructor takes, in its rig's order)

The views are tiled rows x cols into one image (2x2 as Instant3D, 3x2 as Zero123++). The
condition image reaches the UNet by channel concatenation (tiled into every cell) when the
UNet has the extra input channels, and through cross-attention on CLIP image embeddings when
an image encoder is present. Discrete DDPM timesteps are mapped onto the lab's t here and
nowhere else: a DDPM teacher is presented on the lab's cosine (VP) path, at the timestep k
with alpha_bar(k) = cos^2(pi t / 2) (interpolated, clamped to the trained range); a
flow-matching teacher is presented on the linear path at timestep t * num_train_timesteps.
Sampled at its default grid, a teacher steps through the lab times of its own scheduler's
timesteps (``sampling_times``: timestep_spacing, steps_offset, the final step), so the lab's DDIM
and Euler reproduce diffusers' DDIMScheduler and FlowMatchEulerDiscreteScheduler loops. The lab
samplers never clip x0 (``clip_sample``/``thresholding`` are not applied).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samplers.protocol import file_key
from teachers.base import (
    MultiViewTeacher,
    TeacherInfo,
    load_component,
    read_json,
    tile_views,
    untile_views,
    weights_file,
)

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


class DiffusersTeacher(MultiViewTeacher):
    def __init__(
        self,
        unet: nn.Module,
        scheduler_config: dict,
        rows: int,
        cols: int,
        image_size: int,
        vae: nn.Module | None = None,
        image_encoder: nn.Module | None = None,
        weights_key: str = "",
    ):
        super().__init__()
        self.unet, self.vae, self.image_encoder = unet, vae, image_encoder
        self.rows, self.cols = rows, cols
        self._weights_key = weights_key
        cls_name = scheduler_config.get("_class_name", "")
        self.flow = cls_name in FLOW_SCHEDULERS
        self.num_train_timesteps = int(scheduler_config.get("num_train_timesteps", 1000))
        self.scheduler_config = dict(scheduler_config)
        if self.flow:
            path, prediction = "linear", "velocity"
        else:
            ptype = scheduler_config.get("prediction_type", "epsilon")
            if ptype not in PREDICTION_TYPES:
                raise ValueError(
                    f"scheduler_config.json: prediction_type {ptype!r} is not supported; "
                    f"valid: {', '.join(PREDICTION_TYPES)}"
                )
            path, prediction = "cosine", PREDICTION_TYPES[ptype]
            ac = self._ddpm_alphas_cumprod(scheduler_config)
            # exact log SNR per timestep (-inf where alpha_bar = 0: zero terminal SNR), and the
            # clamped table the fractional-timestep interpolation uses
            self.register_buffer("exact_log_snr_k", torch.log(ac) - torch.log1p(-ac), False)
            acc = ac.clamp(1e-12, 1 - 1e-12)
            self.register_buffer("log_snr_k", torch.log(acc) - torch.log1p(-acc), False)
        cfg = unet.config
        out_ch = cfg.out_channels
        if vae is not None:
            self.scale = float(getattr(vae.config, "scaling_factor", 1.0))
            self.down = 2 ** (len(vae.config.block_out_channels) - 1)
            cond_ch = vae.config.latent_channels
        else:
            self.scale, self.down, cond_ch = 1.0, 1, 3
        self.concat = cfg.in_channels == out_ch + cond_ch
        if cfg.in_channels not in (out_ch, out_ch + cond_ch):
            raise ValueError(
                f"unet in_channels={cfg.in_channels} fits neither {out_ch} (no concat) nor "
                f"{out_ch + cond_ch} (views + condition concatenated)"
            )
        self.cross = getattr(cfg, "cross_attention_dim", None)
        if getattr(unet, "class_embedding", None) is not None:
            raise ValueError("class-conditional UNets are not supported (class_embedding is set)")
        unet.class_embedding = nn.Identity()  # the extra-embedding port; zeros leave it unchanged
        size = image_size // self.down
        self.info = TeacherInfo(
            kind="diffusers",
            path=path,
            prediction=prediction,
            views=rows * cols,
            grid=(rows, cols),
            channels=out_ch,
            size=size,
            image_size=image_size,
        )

    @staticmethod
    def _ddpm_alphas_cumprod(config: dict) -> Tensor:
        from diffusers import DDPMScheduler

        keys = (
            "num_train_timesteps",
            "beta_start",
            "beta_end",
            "beta_schedule",
            "trained_betas",
            "rescale_betas_zero_snr",
        )
        sched = DDPMScheduler(**{k: config[k] for k in keys if k in config})
        return sched.alphas_cumprod.double()  # decreasing in k

    @property
    def start_time(self) -> float:
        """Flow teachers start at pure noise; a DDPM teacher at the lab time of its last trained
        timestep (same log SNR on the cosine path; 1 with a zero-terminal-SNR schedule)."""
        if self.flow:
            return 1.0
        return float(self.time_of_timestep(torch.tensor([len(self.log_snr_k) - 1]))[0])

    def time_of_timestep(self, k: Tensor) -> Tensor:
        """Lab times (float64) of integer DDPM timesteps: equal log SNR on the cosine path
        (exactly 1 where alpha_bar = 0)."""
        return self._time_of_log_snr(self.exact_log_snr_k[k.long()])

    @staticmethod
    def _time_of_log_snr(lam: Tensor) -> Tensor:
        return 2 / math.pi * torch.atan(torch.exp(-lam.double() / 2))

    def sampling_times(self, steps: int, shift: float = 1.0) -> Tensor:
        """The lab times of this teacher's own scheduler at ``steps`` steps: a DDPM-family
        config's timesteps as DDIMScheduler sets them (spacing, offset), ending at t = 0 when the
        final alpha_bar is 1 (``set_alpha_to_one``) or else at timestep 0's noise level, in
        float64; a flow config's sigmas. A shift other than 1 asks for the lab's own shifted
        grid instead."""
        if shift != 1.0:
            return super().sampling_times(steps, shift)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        cfg = self.scheduler_config
        if self.flow:
            from diffusers import FlowMatchEulerDiscreteScheduler

            if cfg.get("use_dynamic_shifting"):
                raise ValueError(
                    "scheduler_config.json: use_dynamic_shifting needs a resolution-dependent mu "
                    "the lab does not know; set a fixed shift instead"
                )
            sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
            sched.set_timesteps(steps)
            return sched.sigmas.float()
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(cfg)
        sched.set_timesteps(steps)
        t = self.time_of_timestep(sched.timesteps.clamp(0, len(self.log_snr_k) - 1))
        final = float(sched.final_alpha_cumprod)
        if final >= 1.0:
            end = torch.zeros(1, dtype=torch.float64)
        else:
            end = self._time_of_log_snr(torch.tensor([math.log(final) - math.log1p(-final)]))
        return torch.cat([t, end])  # float64: the samplers keep it for the path coefficients

    def timesteps(self, t: Tensor) -> Tensor:
        """The model's (fractional) timestep for lab times t."""
        if self.flow:
            return t * self.num_train_timesteps
        # cosine path: log SNR(t) = 2 log cot(pi t / 2); find k with the same log SNR
        tt = t.double().clamp(min=1e-6)  # t = 1: cos is 6e-17 in float64, log SNR -73
        lam = 2 * torch.log(torch.cos(0.5 * math.pi * tt) / torch.sin(0.5 * math.pi * tt))
        table = self.log_snr_k.to(lam.device)
        rev = table.flip(0)  # increasing
        idx = torch.searchsorted(rev, lam).clamp(1, len(rev) - 1)
        lo, hi = rev[idx - 1], rev[idx]
        frac = ((lam - lo) / (hi - lo)).clamp(0, 1)
        k = (len(rev) - 1) - ((idx - 1).double() + frac)
        # the times of integer timesteps (sampling_times) pass through float32: snap them back
        near = k.round()
        k = torch.where((k - near).abs() < 1e-3, near, k)
        return k.to(t.dtype)

    @property
    def time_embed_dim(self) -> int:
        return self.unet.time_embedding.linear_2.out_features

    @torch.no_grad()
    def _cond_inputs(self, cond: Tensor, h: int, w: int) -> tuple[Tensor | None, Tensor | None]:
        concat, states = None, None
        if self.concat:
            c = cond
            if self.vae is not None:
                c = F.interpolate(
                    c, size=(h * self.down, w * self.down), mode="bilinear", align_corners=False
                )
                c = self.vae.encode(c).latent_dist.mode() * self.scale
            elif c.shape[-2:] != (h, w):
                c = F.interpolate(c, size=(h, w), mode="bilinear", align_corners=False)
            concat = c
        if self.cross is not None:
            b = cond.shape[0]
            if self.image_encoder is not None:
                px = F.interpolate((cond + 1) / 2, size=224, mode="bilinear", align_corners=False)
                mean = torch.tensor([0.4815, 0.4578, 0.4082], device=cond.device)[:, None, None]
                std = torch.tensor([0.2686, 0.2613, 0.2758], device=cond.device)[:, None, None]
                emb = self.image_encoder((px - mean) / std).image_embeds
                null = cond.flatten(1).abs().amax(1) == 0  # the null condition stays null
                states = (emb * (~null)[:, None].to(emb)).unsqueeze(1)
            else:
                states = torch.zeros(b, 1, self.cross, device=cond.device, dtype=cond.dtype)
        return concat, states

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, emb: Tensor | None = None) -> Tensor:
        self.check_inputs(x_t, t, cond)
        b, v, c, h, w = x_t.shape
        concat, states = self._cond_inputs(cond, h, w)
        x = x_t
        if concat is not None:
            x = torch.cat([x_t, concat[:, None].expand(b, v, *concat.shape[1:]).to(x_t)], dim=2)
        grid = tile_views(x, self.rows, self.cols)
        if emb is None:
            emb = torch.zeros(b, self.time_embed_dim, device=x_t.device, dtype=x_t.dtype)
        kw = {"class_labels": emb}
        if states is not None:
            kw["encoder_hidden_states"] = states.to(x_t)
        out = self.unet(grid, self.timesteps(t), **kw).sample
        return untile_views(out, self.rows, self.cols)

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        if self.vae is None:
            return x.clamp(-1, 1)
        b, v = x.shape[:2]
        img = self.vae.decode(x.flatten(0, 1) / self.scale).sample
        return img.clamp(-1, 1).reshape(b, v, *img.shape[1:])

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        if self.vae is None:
            return images
        b, v = images.shape[:2]
        images = images.to(self.vae.device, self.vae.dtype)
        z = self.vae.encode(images.flatten(0, 1)).latent_dist.mode() * self.scale
        return z.reshape(b, v, *z.shape[1:])

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        rows: int | None = None,
        cols: int | None = None,
        image_size: int | None = None,
    ) -> DiffusersTeacher:
        """Load from a local folder; grid and size come from multiview.json unless given."""
        from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel

        folder = Path(folder)
        unet_dir = folder / "unet"
        ucfg = read_json(unet_dir / "config.json", "a diffusers teacher needs unet/config.json")
        sched = read_json(
            folder / "scheduler" / "scheduler_config.json",
            "a diffusers teacher needs its scheduler config (prediction type, beta schedule)",
        )
        unet_cls = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
        name = ucfg.get("_class_name")
        if name not in unet_cls:
            raise ValueError(
                f"{unet_dir / 'config.json'}: _class_name {name!r} is not supported; valid: "
                f"{', '.join(unet_cls)}"
            )
        mv = {}
        if (folder / "multiview.json").exists():
            mv = read_json(folder / "multiview.json", "")
        rows = rows or int(mv.get("rows", 2))
        cols = cols or int(mv.get("cols", 2))
        views = None
        if "azimuths" in mv or "elevations" in mv:
            az, el = mv.get("azimuths", []), mv.get("elevations", [])
            if len(az) != rows * cols or len(el) != rows * cols:
                raise ValueError(
                    f"{folder / 'multiview.json'}: a {rows}x{cols} grid needs {rows * cols} "
                    f"azimuths and elevations, got {len(az)} and {len(el)}"
                )
            views = [(float(a), float(e)) for a, e in zip(az, el)]
        unet = load_component(unet_cls[name], unet_dir)
        vae = load_component(AutoencoderKL, folder / "vae") if (folder / "vae").is_dir() else None
        enc = None
        if (folder / "image_encoder").is_dir():
            from transformers import CLIPVisionModelWithProjection

            enc = CLIPVisionModelWithProjection.from_pretrained(
                folder / "image_encoder", local_files_only=True
            )
        if image_size is None:
            if "image_size" in mv:
                image_size = int(mv["image_size"])
            else:
                down = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
                ss = ucfg.get("sample_size") or 64
                ss = ss[0] if isinstance(ss, (list, tuple)) else ss
                image_size = ss // rows * down
        model = cls(unet, sched, rows, cols, image_size, vae, enc, file_key(weights_file(unet_dir)))
        model.views = views
        model.record = {"multiview": mv}
        return model.eval()
