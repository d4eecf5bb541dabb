"""The lab's multi-view teacher: a diffusers UNet2DModel on the views tiled 2x2 (the Instant3D /
Zero123++ layout, so the grid's self-attention sees all views). ``arch`` says how the condition
enters:

- ``concat`` (the teachers up to world 2): the condition image and a per-view azimuth code are
  concatenated to every view on channels;
- ``v3`` (a miniature of the published teachers): the condition enters every UNet resolution by
  reference attention, the processors Zero123++ uses (teachers/reference_attention.py: the
  condition runs through the same UNet at the same time and every self-attention appends its
  states as keys/values), and every target view carries its per-pixel camera rays as Pluecker
  coordinates (o x d, d) (recon/cameras.py), the cameras taken relative to the condition camera
  (as camera-conditioned multi-view models embed them, e.g. MVDream's relative cameras). The
  reference pass sees the condition image (with its own rays, zero moment in its own frame)
  clean, not noised to t as Zero123++ noises it: on the lab's linear path alpha(1) = 0 would
  erase it at the first step.

  ``concat_condition`` (v3 only) also concatenates the condition image on channels to every view
  and, so the channel count agrees, to the reference pass's image: a pixel-aligned path beside
  the attention, as Zero123, SV3D and Wonder3D take their condition (the diagnosis on world 3
  found attention and rays alone slow to find where the condition's pixels land).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor

from recon.cameras import intrinsics, orbit_viewmat, pluecker
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
from teachers.reference_attention import install_reference_attention, reference_forward

TIME_SCALE = 1000.0  # t in [0, 1] is fed to the UNet's sinusoidal embedding as t * 1000
ARCHS = ("concat", "v3")
REFERENCE_TIMES = ("same", "zero")  # v3: the reference pass's time
RAY_CHANNELS = 6  # Pluecker: moment o x d, direction d


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
    arch: str = "concat"  # concat (condition + azimuth code on channels) | v3 (reference + rays)
    # v3's cameras, the world's rig (scenes/world.py; teacher train checks they agree): one
    # elevation per target view, the condition camera, the orbit distance, the field of view
    elevations: list[float] = field(default_factory=lambda: [20.0, 20.0, 20.0, 20.0])
    cond_azimuth: float = 0.0
    cond_elevation: float = 5.0
    distance: float = 2.2
    fov_deg: float = 40.0
    # v3's reference pass: at the main pass's time ("same": the clean condition read with the
    # time embedding of the noisy views) or at t = 0 ("zero": read as the clean image it is)
    reference_time: str = "same"
    # v3: the condition also on channels (a pixel-aligned path; the concat arch always has it)
    concat_condition: bool = False


def lab_cameras(cfg: LabTeacherConfig) -> tuple[Tensor, Tensor, Tensor]:
    """The rig a v3 teacher was made for: condition w2c [4, 4], target w2c [V, 4, 4], K [3, 3]
    (float64)."""
    cond = orbit_viewmat(cfg.cond_azimuth, cfg.cond_elevation, cfg.distance).double()
    targets = torch.stack(
        [orbit_viewmat(a, e, cfg.distance) for a, e in zip(cfg.azimuths, cfg.elevations)]
    ).double()
    return cond, targets, intrinsics(cfg.image_size, cfg.image_size, cfg.fov_deg).double()


def relative_rays(
    cond_viewmat: Tensor, target_viewmats: Tensor, K: Tensor, size: int
) -> tuple[Tensor, Tensor]:
    """Pluecker rays (o x d, d) of the target cameras [V, 6, size, size] and of the condition
    camera [6, size, size], in the condition camera's frame: a point x there is
    ``inv(cond_viewmat) x`` in the world, so a target's world-to-camera becomes
    ``target_viewmat @ inv(cond_viewmat)``; the rays depend on the poses relative to the
    condition camera only."""
    rel = target_viewmats @ torch.linalg.inv(cond_viewmat)
    eye = torch.eye(4, dtype=rel.dtype)[None]
    targets = pluecker(rel, K.to(rel).expand(len(rel), 3, 3), size, size)
    return targets, pluecker(eye, K.to(rel)[None], size, size)[0]


class LabTeacher(MultiViewTeacher):
    def __init__(self, cfg: LabTeacherConfig, unet: UNet2DModel | None = None):
        super().__init__()
        get_path(cfg.path)
        check_prediction(cfg.prediction)
        if cfg.views % cfg.rows:
            raise ValueError(f"teacher.views={cfg.views} not divisible by teacher.rows={cfg.rows}")
        if len(cfg.azimuths) != cfg.views:
            raise ValueError(f"teacher.azimuths needs {cfg.views} entries, got {len(cfg.azimuths)}")
        if cfg.arch not in ARCHS:
            raise ValueError(f"teacher.arch={cfg.arch!r}; valid: {', '.join(ARCHS)}")
        v3 = cfg.arch == "v3"
        if v3 and len(cfg.elevations) != cfg.views:
            raise ValueError(
                f"teacher.elevations needs {cfg.views} entries, got {len(cfg.elevations)}"
            )
        if cfg.reference_time not in REFERENCE_TIMES:
            raise ValueError(
                f"teacher.reference_time={cfg.reference_time!r}; valid: "
                + ", ".join(REFERENCE_TIMES)
            )
        if cfg.concat_condition and not v3:
            raise ValueError(
                "teacher.concat_condition is a v3 option (teacher.arch=concat always "
                "concatenates the condition)"
            )
        if v3 and not all(cfg.attention):
            raise ValueError(
                f"teacher.arch=v3 needs attention at every level (the condition enters there by "
                f"reference attention), got teacher.attention={list(cfg.attention)}"
            )
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
                self.input_channels * p * p,
                3 * p * p,
                cfg.channels,
                cfg.attention,
                cfg.layers_per_block,
                cfg.head_dim,
                cfg.norm_groups,
                class_embed_type="identity",  # the extra-embedding port students use; zeros = none
            )
        )
        if v3:
            targets, own = relative_rays(*lab_cameras(cfg), cfg.image_size)
            self.register_buffer("target_rays", targets.float(), persistent=False)
            self.register_buffer("cond_rays", own.float(), persistent=False)
            install_reference_attention(self.unet)
            self.reference = True  # False: the main pass alone (bench measures the difference)
            return
        az = torch.tensor([math.radians(a) for a in cfg.azimuths])
        code = torch.stack([torch.cos(az), torch.sin(az)], 1)  # [V, 2]
        self.register_buffer("view_code", code, persistent=False)

    @property
    def input_channels(self) -> int:
        """Channels per view before space-to-depth: the view, then the condition (concat, or v3
        with concat_condition), then the azimuth code (concat) or the rays (v3)."""
        if self.cfg.arch == "concat":
            return 3 + 3 + 2
        return 3 + 3 * self.cfg.concat_condition + RAY_CHANNELS

    @property
    def time_embed_dim(self) -> int:
        return self.unet.time_embedding.linear_2.out_features

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, emb: Tensor | None = None) -> Tensor:
        self.check_inputs(x_t, t, cond)
        b, v, _, h, w = x_t.shape
        rows, cols = self.info.grid
        if cond.shape[-2:] != (h, w):
            raise ValueError(f"cond must be {h}x{w} like the views, got {tuple(cond.shape[-2:])}")
        if emb is None:
            emb = torch.zeros(b, self.time_embed_dim, dtype=x_t.dtype, device=x_t.device)
        if self.cfg.arch == "v3":
            return self._forward_v3(x_t, t, cond, emb)
        cond_v = cond[:, None].expand(b, v, 3, h, w)
        code = self.view_code.to(x_t)[None, :, :, None, None].expand(b, v, 2, h, w)
        inp = tile_views(torch.cat([x_t, cond_v.to(x_t), code], dim=2), rows, cols)
        p = self.cfg.patch
        out = self.unet(F.pixel_unshuffle(inp, p), t * TIME_SCALE, class_labels=emb).sample
        return untile_views(F.pixel_shuffle(out, p), rows, cols)

    def _forward_v3(self, x_t: Tensor, t: Tensor, cond: Tensor, emb: Tensor) -> Tensor:
        """1. each view with its rays, tiled; 2. the condition with its own rays through the
        same UNet (the reference pass); 3. the main pass attends to it at every level."""
        b, v, _, h, w = x_t.shape
        rows, cols = self.info.grid
        p = self.cfg.patch
        rays = self.target_rays.to(x_t)[None].expand(b, v, RAY_CHANNELS, h, w)
        pixels = [cond.to(x_t)] if self.cfg.concat_condition else []
        views = [x_t, *(c[:, None].expand(b, v, 3, h, w) for c in pixels), rays]
        main = F.pixel_unshuffle(tile_views(torch.cat(views, dim=2), rows, cols), p)
        k = t * TIME_SCALE
        if not self.reference:
            out = self.unet(main, k, class_labels=emb).sample
        else:
            own = self.cond_rays.to(x_t)[None].expand(b, RAY_CHANNELS, h, w)
            ref = F.pixel_unshuffle(torch.cat([cond.to(x_t), *pixels, own], dim=1), p)
            k_ref = k if self.cfg.reference_time == "same" else torch.zeros_like(k)
            out = reference_forward(self.unet, main, k, ref, class_labels=emb, reference_time=k_ref)
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
