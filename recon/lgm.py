"""An LGM-compatible reconstructor (Tang et al. 2024): four posed views at 256 px plus their
Pluecker rays -> one Gaussian per output pixel of a multi-view UNet, loading the published
checkpoint (huggingface ashawkey/LGM, ``model_fp16.safetensors``) unchanged.

What was read where (3DTopia/LGM; the lab's code is its own):
- core/options.py: the option sets ('big': down 64..1024 with attention on the last three, up
  1024, 1024, 512, 256, 128, splat_size 128 at input_size 256; fovy 49.1, cam_radius 1.5).
- core/models.py: UNet(9 in, 14 out) then a 1x1 conv ``conv``; output channels per Gaussian
  position 0:3 (clamped to [-1, 1]), opacity 3 (sigmoid), scale 4:7 (0.1 softplus), rotation
  7:11 (normalised, 3DGS order w x y z), colour 11:14 (0.5 tanh + 0.5); Gaussians ordered view,
  row, column.
- infer.py and core/provider_objaverse.py: RGB in [0, 1] on white, normalised with ImageNet's
  mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), then the 6 ray channels.
- The rotation quirk. Until commit 9a0797c ("fix rotation normalization", 2024-04-03) the
  activation was ``F.normalize`` with its default dim=1, which on [B, N, 4] normalises each
  quaternion component over the N Gaussians of an object, not each quaternion; the readme
  (commits 0162cb8, fe8d12c) says the released model_fp16.safetensors was trained that way and
  model_fp16_fixrot.safetensors was fine-tuned with dim=-1. The rasteriser LGM trained with
  (ashawkey/diff-gaussian-rasterization cuda_rasterizer/forward.cu computeCov3D) does not
  normalise the quaternion: it builds R from the raw components, so the trained covariance is
  (R~ S)(R~ S)^T with R~ not a rotation. Here mode "gaussian_axis" reproduces that covariance
  exactly and factors it into a unit quaternion and scales (eigen-decomposition); mode
  "per_gaussian" is the fixed activation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from recon.base import GaussianReconstructor, ReconRig, check_inputs
from recon.gaussians import Gaussians
from recon.lgm_cameras import (
    fovy_deg,
    lab_to_lgm_frame,
    lgm_rays,
    points_to_lab,
    similarity_scale,
    to_lgm_c2w,
)
from recon.lgm_rotation import factor_to_quat_scale, raw_rotmat, rotmat_to_quat
from recon.lgm_unet import LGMUNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUT = 14  # position 3, opacity 1, scale 3, rotation 4, colour 3
CONFIG_FILE = "lgm.json"  # the lab's optional note beside the weights; the real folder has none
# weights file names of the release, and the rotation normalisation each was trained with
WEIGHT_FILES = {
    "model_fp16.safetensors": "gaussian_axis",
    "model_fp16_fixrot.safetensors": "per_gaussian",
}
ROTATION_MODES = ("gaussian_axis", "per_gaussian")


@dataclass
class LGMConfig:
    """An LGM option set (core/options.py) plus what the lab needs to run it."""

    options: str = "big"  # the option set this was built from
    input_size: int = 256
    down_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024, 1024])
    down_attention: list[bool] = field(
        default_factory=lambda: [False, False, False, True, True, True]
    )
    mid_attention: bool = True
    up_channels: list[int] = field(default_factory=lambda: [1024, 1024, 512, 256, 128])
    up_attention: list[bool] = field(default_factory=lambda: [True, True, True, False, False])
    splat_size: int = 128  # output pixels per view side
    fovy: float = 49.1
    cam_radius: float = 1.5
    views: int = 4
    azimuths: list[float] = field(default_factory=lambda: [0.0, 90.0, 180.0, 270.0])
    elevation: float = 0.0  # lab convention (LGM's kiui cameras use the opposite sign)
    heads: int = 16  # LGM's attention_heads; the lab's tiny fixtures use fewer
    norm_groups: int = 32  # LGM's GroupNorm groups; the lab's tiny fixtures use fewer
    rotation_normalisation: str = "gaussian_axis"  # see the module docstring


# core/options.py's option sets, as differences from 'big'
OPTION_SETS = {
    "big": {},
    "small": dict(
        up_channels=[1024, 1024, 512, 256], up_attention=[True, True, True, False], splat_size=64
    ),
}


def lgm_config(options: str = "big", **overrides) -> LGMConfig:
    """The config of a named option set, with ``overrides``; unknown names are clear errors."""
    if options not in OPTION_SETS:
        raise ValueError(f"unknown LGM option set {options!r}; known: {', '.join(OPTION_SETS)}")
    known = {f.name for f in fields(LGMConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown LGM config keys {bad}; known: {sorted(known)}")
    return LGMConfig(**{**OPTION_SETS[options], **overrides, "options": options})


class LGMReconstructor(GaussianReconstructor):
    kind = "lgm"

    def __init__(self, cfg: LGMConfig):
        super().__init__()
        if cfg.rotation_normalisation not in ROTATION_MODES:
            raise ValueError(
                f"lgm rotation_normalisation {cfg.rotation_normalisation!r}: one of "
                f"{', '.join(ROTATION_MODES)}"
            )
        n_down, n_up = len(cfg.down_channels), len(cfg.up_channels)
        if len(cfg.down_attention) != n_down or len(cfg.up_attention) != n_up:
            raise ValueError("lgm: down/up_attention need one entry per down/up_channels entry")
        splat = cfg.input_size * 2 ** (n_up - 1) // 2 ** (n_down - 1)
        if splat != cfg.splat_size:
            raise ValueError(
                f"lgm: input_size {cfg.input_size} through {n_down} down and {n_up} up blocks "
                f"gives {splat} px Gaussians per view side, not splat_size {cfg.splat_size}"
            )
        if len(cfg.azimuths) != cfg.views:
            raise ValueError(f"lgm: {len(cfg.azimuths)} azimuths for {cfg.views} views")
        self.cfg = cfg
        self.record: dict = {"kind": "lgm", "config": asdict(cfg)}
        self.weights_path: Path | None = None
        self.unet = LGMUNet(
            9, OUT, cfg.down_channels, cfg.down_attention, cfg.mid_attention, cfg.up_channels,
            cfg.up_attention, heads=cfg.heads, groups=cfg.norm_groups, views=cfg.views,
        )  # fmt: skip
        self.conv = nn.Conv2d(OUT, OUT, kernel_size=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    @property
    def rig(self) -> ReconRig:
        c = self.cfg
        return ReconRig(
            azimuths=tuple(float(a) for a in c.azimuths),
            elevations=(float(c.elevation),) * c.views,
            fov_deg=c.fovy,
            distance=None,  # the lab world is rescaled so that view 0 sits at cam_radius
            image_size=c.input_size,
            convention="opengl-c2w",
            normalisation="imagenet",
        )

    def network_inputs(self, views: Tensor, viewmats: Tensor, Ks: Tensor):
        """LGM's input [B, V, 9, H, W] (ImageNet-normalised RGB, rays) and the similarity A
        [B, 4, 4] from the lab world into LGM's."""
        c = self.cfg
        viewmats, Ks = check_inputs(views, viewmats, Ks, c.views, c.input_size)
        vm = viewmats.float()
        a = lab_to_lgm_frame(vm, c.cam_radius)
        rays = lgm_rays(to_lgm_c2w(vm, a), c.input_size, fovy_deg(Ks.float(), c.input_size))
        rgb = ((views + 1) / 2 - self.mean.to(views)) / self.std.to(views)
        return torch.cat([rgb, rays.to(views)], dim=2), a

    def raw(self, x: Tensor) -> Tensor:
        """The network's 14 channels per Gaussian [B, V*h*w, 14] (LGM's forward_gaussians
        before its activations)."""
        b, v = x.shape[:2]
        out = self.conv(self.unet(x.flatten(0, 1).to(self.conv.weight.dtype)))
        return out.reshape(b, v, OUT, -1).permute(0, 1, 3, 2).reshape(b, -1, OUT)

    def forward(self, views: Tensor, viewmats: Tensor, Ks: Tensor) -> Gaussians:
        """views [B, V, 3, H, W] in [-1, 1]; lab cameras [V or B x V, 4, 4] and [.., 3, 3]."""
        x, a = self.network_inputs(views, viewmats, Ks)
        return lgm_gaussians(self.raw(x), a, self.cfg.rotation_normalisation)

    def save_pretrained(
        self, folder: str | Path, record: dict | None = None, dtype: torch.dtype = torch.float16
    ) -> None:
        """The release's layout: the weights file (named by the rotation normalisation) and the
        lab's ``lgm.json`` (config and ``record``'s entries)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = {m: f for f, m in WEIGHT_FILES.items()}[self.cfg.rotation_normalisation]
        sd = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(sd, folder / name)
        info = {"kind": "lgm", "weights": name, "config": asdict(self.cfg), **(record or {})}
        (folder / CONFIG_FILE).write_text(json.dumps(info, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32):
        """The LGM reconstructor in ``folder``: a released weights file, and optionally the
        lab's lgm.json (without it: option set 'big', rotation mode by the file's name)."""
        from recon.lgm_folder import load_lgm

        return load_lgm(cls, Path(folder), dtype)


def lgm_gaussians(raw: Tensor, a: Tensor, rotation: str) -> Gaussians:
    """LGM's activations on raw channels [B, N, 14] in LGM's world, carried into the lab world
    by the inverse of the similarity ``a`` [B, 4, 4]."""
    raw = raw.float()
    pos = raw[..., 0:3].clamp(-1, 1)
    opacity = torch.sigmoid(raw[..., 3])
    scale = 0.1 * F.softplus(raw[..., 4:7])
    colour = 0.5 * torch.tanh(raw[..., 11:14]) + 0.5
    s = similarity_scale(a)  # [B]
    rot_to_lab = (a[..., :3, :3] / s[..., None, None]).transpose(-1, -2)[:, None]  # Q^T
    if rotation == "per_gaussian":
        R = raw_rotmat(F.normalize(raw[..., 7:11], dim=-1))
        quats = rotmat_to_quat(rot_to_lab @ R)
        scales = scale / s[:, None, None]
    else:  # the release: F.normalize's default dim=1, over the Gaussians of each object
        q = F.normalize(raw[..., 7:11], dim=1)
        M = rot_to_lab @ (raw_rotmat(q) * scale[..., None, :]) / s[:, None, None, None]
        quats, scales = factor_to_quat_scale(M)
    return Gaussians(
        means=points_to_lab(pos, a),
        quats=quats,
        scales=scales,
        opacities=opacity,
        colors=colour,
    )
