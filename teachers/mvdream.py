"""The MVDream / ImageDream family: a multi-view UNet over views as frames (teachers/mv_unet.py).

Facts read from ashawkey/mvdream_diffusers (pipeline_mvdream.py, mv_unet.py, convert script;
commit 8b318ef), 3DTopia/LGM (mvdream/, infer.py) and bytedance/MVDream (camera_utils.py,
configs/sd-v2-base.yaml); the code is ours:
  - folder: model_index.json (MVDreamPipeline), unet/ (MultiViewUNetModel), vae/ (AutoencoderKL),
    text_encoder/ + tokenizer/ (CLIP text, SD 2.1's), scheduler/ (DDIMScheduler: scaled_linear
    0.00085..0.012, 1000 steps, epsilon, steps_offset 1, set_alpha_to_one False); ImageDream adds
    image_encoder/ (CLIPVisionModel, penultimate hidden states) and feature_extractor/;
  - 4 views of 256 px at azimuths 0/90/180/270 and elevation 0 (the pipeline's defaults), each
    a frame with its own camera; ImageDream appends a fifth frame holding the clean condition
    latent, with an all-zero camera;
  - cameras: camera-to-world 4x4 with OpenGL camera axes (x right, y up, z back) at unit
    distance, in MVDream's world (y up, azimuth 0 on +z, 90 on +x) turned to Blender's z-up by
    (x, y, z) -> (x, -z, y): azimuth 0 sits on -y, 90 on +x, positive elevation above;
  - guidance: the unconditional branch has the negative prompt's text, zero image tokens and a
    zero condition latent (the lab's null condition, all zeros, maps to exactly that).
The lab presents it on the cosine path with eps prediction; DDPM timesteps map to lab time in
DiffusersTeacher (equal log SNR), so the lab's DDIM on ``sampling_times`` is diffusers' DDIM.
Differences from the pipeline, on purpose: the condition latent is the VAE posterior's mode
(the pipeline samples it), and the CLIP input is not quantised to 8 bits first.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.cameras import orbit_viewmat
from teachers.base import TeacherInfo
from teachers.external import PREDICTION_TYPES, DiffusersTeacher
from teachers.mv_unet import MultiViewUNetModel
from teachers.mvdream_folder import CLIP_MEAN, CLIP_STD

# lab world (z up, azimuth 0 on +x, 90 on +y) -> the family's (z up, azimuth 0 on -y, 90 on +x)
LAB_TO_FAMILY = torch.tensor(
    [[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
CV_TO_GL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))  # camera axes y, z flip


def viewmat_to_family(viewmats: Tensor) -> Tensor:
    """Lab world-to-camera (OpenCV) [..., 4, 4] -> the family's camera-to-world [..., 4, 4]
    (OpenGL axes, its world, the camera centre moved onto the unit sphere)."""
    c2w = LAB_TO_FAMILY.to(viewmats) @ torch.linalg.inv(viewmats) @ CV_TO_GL.to(viewmats)
    centre = c2w[..., :3, 3]
    c2w[..., :3, 3] = centre / centre.norm(dim=-1, keepdim=True)
    return c2w


def family_to_viewmat(c2w: Tensor, distance: float) -> Tensor:
    """The family's camera-to-world [..., 4, 4] -> lab world-to-camera with the camera centre at
    ``distance`` from the origin (the family's cameras carry direction only)."""
    c2w = c2w.clone()
    c2w[..., :3, 3] = c2w[..., :3, 3] * distance
    return torch.linalg.inv(LAB_TO_FAMILY.to(c2w).T @ c2w @ CV_TO_GL.to(c2w))


def family_cameras(views: list[tuple[float, float]], extra_frame: bool) -> Tensor:
    """The UNet's camera input [F, 16] of lab views (azimuth, elevation): each lab orbit camera
    converted and flattened row-major, plus ImageDream's all-zero row for the condition frame."""
    mats = torch.stack([orbit_viewmat(a, e, 1.0) for a, e in views]).double()
    cams = viewmat_to_family(mats).flatten(1).float()
    return torch.cat([cams, torch.zeros(1, 16)]) if extra_frame else cams


class MVDreamTeacher(DiffusersTeacher):
    """``teacher(x_t [B, V, 4, h, w], t, cond [B, 3, H, W], emb=None)`` -> eps [B, V, 4, h, w]."""

    def __init__(
        self,
        unet: MultiViewUNetModel,
        scheduler_config: dict,
        vae,
        context: Tensor,
        negative_context: Tensor,
        views: list[tuple[float, float]],
        image_size: int,
        image_encoder=None,
        clip_input: dict | None = None,  # resize, crop, mean, std (mvdream_folder.clip_input)
        weights_key: str = "",
    ):
        nn.Module.__init__(self)  # not DiffusersTeacher's: it builds a tiled-grid UNet
        self.unet, self.vae, self.image_encoder = unet, vae, image_encoder
        self.family = "imagedream" if unet.ip_dim > 0 else "mvdream"
        if self.family == "imagedream" and image_encoder is None:
            raise ValueError("an ImageDream UNet (ip_dim > 0) needs image_encoder/")
        self._weights_key = weights_key
        self._schedule(scheduler_config)
        self.scale = float(getattr(vae.config, "scaling_factor", 1.0))
        self.down = 2 ** (len(vae.config.block_out_channels) - 1)
        self.clip_input = clip_input or {
            "size": 224,
            "crop": 224,
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
        }
        self.views = [(float(a), float(e)) for a, e in views]
        self.register_buffer("context", context, persistent=False)
        self.register_buffer("negative_context", negative_context, persistent=False)
        cams = family_cameras(self.views, self.family == "imagedream")
        self.register_buffer("cameras", cams, persistent=False)
        v = len(self.views)
        self.info = TeacherInfo(
            kind=self.family,
            path="cosine",
            prediction=self.prediction_name,
            views=v,
            grid=(1, v),
            channels=unet.config.out_channels,
            size=image_size // self.down,
            image_size=image_size,
        )

    def _schedule(self, cfg: dict) -> None:
        """The DDPM tables DiffusersTeacher's time mapping reads (timesteps <-> lab time)."""
        ptype = cfg.get("prediction_type", "epsilon")
        if ptype not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler_config.json: prediction_type {ptype!r} is not supported; valid: "
                f"{', '.join(PREDICTION_TYPES)}"
            )
        self.prediction_name = PREDICTION_TYPES[ptype]
        self.flow = False
        self.scheduler_config = dict(cfg)
        self.num_train_timesteps = int(cfg.get("num_train_timesteps", 1000))
        ac = self._ddpm_alphas_cumprod(cfg)
        self.register_buffer("exact_log_snr_k", torch.log(ac) - torch.log1p(-ac), False)
        acc = ac.clamp(1e-12, 1 - 1e-12)
        self.register_buffer("log_snr_k", torch.log(acc) - torch.log1p(-acc), False)

    @property
    def time_embed_dim(self) -> int:
        return self.unet.time_embed_dim

    def _clip_pixels(self, cond: Tensor) -> Tensor:
        """The feature extractor's input: shortest edge resized (bicubic), centre crop, CLIP
        normalisation."""
        c = self.clip_input
        x = (cond + 1) / 2
        h, w = x.shape[-2:]
        r = c["size"] / min(h, w)
        x = F.interpolate(
            x,
            size=(round(h * r), round(w * r)),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        )
        top, left = (x.shape[-2] - c["crop"]) // 2, (x.shape[-1] - c["crop"]) // 2
        x = x[..., top : top + c["crop"], left : left + c["crop"]]
        mean = torch.tensor(c["mean"], device=x.device, dtype=x.dtype)[:, None, None]
        std = torch.tensor(c["std"], device=x.device, dtype=x.dtype)[:, None, None]
        return (x - mean) / std

    @torch.no_grad()
    def _condition(self, cond: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(text context [B, L, D], image tokens [B, N, E] or None, condition latent or None);
        an all-zero condition gets the negative prompt, zero tokens and a zero latent."""
        null = cond.flatten(1).abs().amax(1) == 0
        context = torch.where(null[:, None, None], self.negative_context, self.context)
        if self.family == "mvdream":
            return context, None, None
        enc = self.image_encoder(self._clip_pixels(cond).to(self.image_encoder.dtype),
                                 output_hidden_states=True)  # fmt: skip
        keep = (~null).to(cond.dtype)
        ip = enc.hidden_states[-2] * keep[:, None, None]
        px = self.info.image_size
        c = F.interpolate(cond, size=(px, px), mode="bilinear", align_corners=False)
        lat = self.vae.encode(c.to(self.vae.dtype)).latent_dist.mode() * self.scale
        return context, ip, lat * keep[:, None, None, None]

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, emb: Tensor | None = None) -> Tensor:
        self.check_inputs(x_t, t, cond)
        b, v = x_t.shape[:2]
        context, ip, ip_img = self._condition(cond)
        x = x_t if ip_img is None else torch.cat([x_t, ip_img[:, None].to(x_t)], dim=1)
        f = x.shape[1]  # frames: the views, plus ImageDream's condition frame

        def per_frame(z: Tensor) -> Tensor:
            return z.repeat_interleave(f, dim=0)

        kw = {"camera": self.cameras.to(x_t).repeat(b, 1), "num_frames": f}
        if ip is not None:
            kw.update(ip=per_frame(ip).to(x_t), ip_img=ip_img.to(x_t))
        if emb is not None:
            kw["added_emb"] = per_frame(emb)
        timesteps = per_frame(self.timesteps(t))
        out = self.unet(x.flatten(0, 1), timesteps, per_frame(context).to(x_t), **kw)
        return out.unflatten(0, (b, f))[:, :v]

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MVDreamTeacher:
        """Load a published MVDream or ImageDream folder (or a fixture of the same layout)."""
        from teachers.mvdream_folder import load_parts

        parts = load_parts(Path(folder))
        model = cls(**parts["init"])
        model.record = parts["record"]
        return model.eval()


def describe(folder: str | Path) -> dict:
    """What ``distill teacher inspect`` prints for an MVDream/ImageDream folder (configs only)."""
    from teachers.mvdream_folder import describe_folder

    return describe_folder(Path(folder))
