"""The lab's multi-view teacher: a diffusers UNet2DModel on the views tiled 2x2 (the Instant3D /
Zero123++ layout, so the grid's self-attention sees all views), with the condition image and a
per-view azimuth code concatenated on channels."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor

from recon.tiling import grid_unet
from samplers.paths import check_prediction, get_path
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

TIME_SCALE = 1000.0  # t in [0, 1] is fed to the UNet's sinusoidal embedding as t * 1000


@dataclass
class LabTeacherConfig:
    """Architecture and parametrization of the lab teacher."""

    path: str = "linear"  # linear (rectified flow) or cosine (VP)
    prediction: str = "velocity"  # velocity (linear default) or v / eps / x0
    views: int = 4  # target views, tiled rows x cols
    rows: int = 2
    image_size: int = 32  # per-view size in pixels
    azimuths: list[float] = field(default_factory=lambda: [0.0, 90.0, 180.0, 270.0])
    channels: list[int] = field(default_factory=lambda: [48, 96, 128])  # per UNet level
    attention: list[bool] = field(default_factory=lambda: [False, True, True])  # per level
    layers_per_block: int = 1
    patch: int = 2  # space-to-depth factor before the UNet (pixel-unshuffle), 1 = none
    head_dim: int = 32  # attention head size
    norm_groups: int = 16


class LabTeacher(MultiViewTeacher):
    def __init__(self, cfg: LabTeacherConfig, unet: UNet2DModel | None = None):
        super().__init__()
        get_path(cfg.path)
        check_prediction(cfg.prediction)
        if cfg.views % cfg.rows:
            raise ValueError(f"teacher.views={cfg.views} not divisible by teacher.rows={cfg.rows}")
        if len(cfg.azimuths) != cfg.views:
            raise ValueError(f"teacher.azimuths needs {cfg.views} entries, got {len(cfg.azimuths)}")
        self.cfg = cfg
        self.info = TeacherInfo(
            kind="lab",
            path=cfg.path,
            prediction=cfg.prediction,
            views=cfg.views,
            grid=(cfg.rows, cfg.views // cfg.rows),
            channels=3,
            size=cfg.image_size,
            image_size=cfg.image_size,
        )
        p = cfg.patch
        self.unet = (
            unet
            if unet is not None
            else grid_unet(
                cfg.image_size * cfg.rows // p,
                (3 + 3 + 2) * p * p,
                3 * p * p,
                cfg.channels,
                cfg.attention,
                cfg.layers_per_block,
                cfg.head_dim,
                cfg.norm_groups,
                class_embed_type="identity",  # the extra-embedding port students use; zeros = none
            )
        )
        az = torch.tensor([math.radians(a) for a in cfg.azimuths])
        code = torch.stack([torch.cos(az), torch.sin(az)], 1)  # [V, 2]
        self.register_buffer("view_code", code, persistent=False)

    @property
    def time_embed_dim(self) -> int:
        return self.unet.time_embedding.linear_2.out_features

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, emb: Tensor | None = None) -> Tensor:
        self.check_inputs(x_t, t, cond)
        b, v, _, h, w = x_t.shape
        rows, cols = self.info.grid
        if cond.shape[-2:] != (h, w):
            raise ValueError(f"cond must be {h}x{w} like the views, got {tuple(cond.shape[-2:])}")
        cond_v = cond[:, None].expand(b, v, 3, h, w)
        code = self.view_code.to(x_t)[None, :, :, None, None].expand(b, v, 2, h, w)
        inp = tile_views(torch.cat([x_t, cond_v.to(x_t), code], dim=2), rows, cols)
        if emb is None:
            emb = torch.zeros(b, self.time_embed_dim, dtype=x_t.dtype, device=x_t.device)
        p = self.cfg.patch
        out = self.unet(F.pixel_unshuffle(inp, p), t * TIME_SCALE, class_labels=emb).sample
        return untile_views(F.pixel_shuffle(out, p), rows, cols)

    def save_pretrained(
        self, folder: str | Path, dtype: torch.dtype = torch.float16, record: dict | None = None
    ):
        """Write ``unet/`` (diffusers format) and ``teacher.json`` (with ``record``'s entries)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        unet = self.unet
        if dtype != torch.float32:
            unet = UNet2DModel.from_config(self.unet.config).to(dtype)
            unet.load_state_dict({k: v.to(dtype) for k, v in self.unet.state_dict().items()})
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        info = {"kind": "lab", "config": asdict(self.cfg), "dtype": str(dtype).split(".")[-1]}
        info.update(record or {})
        (folder / "teacher.json").write_text(json.dumps(info, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> LabTeacher:
        """The lab teacher saved in ``folder`` by :meth:`save_pretrained`."""
        folder = Path(folder)
        info = read_json(folder / "teacher.json", "a lab teacher folder needs teacher.json")
        try:
            cfg = LabTeacherConfig(**info["config"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{folder / 'teacher.json'}: bad 'config' entry ({e})") from e
        unet = load_component(UNet2DModel, folder / "unet")
        model = cls(cfg, unet)
        model._weights_key = file_key(weights_file(folder / "unet"))
        model.record = info  # teacher.json: how it was trained, on which world
        return model
