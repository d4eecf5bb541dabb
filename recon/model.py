"""The fixed feed-forward reconstructor: V posed views in, one 3D Gaussian per input pixel out
(pixel-aligned, as LGM and GRM predict them).

Each view gets its Pluecker ray embedding (6 channels) next to its RGB; the views are tiled
into a grid and run through a diffusers UNet2DModel whose self-attention spans every view. Per
pixel the head predicts a camera depth along the pixel's ray, opacity, scales, rotation and a
colour residual on the pixel's own colour, each through a bounded activation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from recon.base import GaussianReconstructor, ReconRig, check_inputs
from recon.cameras import camera_rays
from recon.gaussians import Gaussians
from recon.tiling import grid_unet, tile_views, untile_views

OUT_CHANNELS = 12  # depth 1, opacity 1, scales 3, quaternion 4, colour residual 3
# the rig of a reconstructor without a recorded world: scenes.world.WorldConfig's defaults
# (tests/recon/test_lgm_interface.py checks that they agree)
DEFAULT_RIG = dict(
    target_azimuths=[0.0, 90.0, 180.0, 270.0], target_elevation=20.0, fov_deg=40.0, distance=2.2
)


@dataclass
class ReconConfig:
    """Architecture and output ranges of the reconstructor."""

    views: int = 4  # input views, tiled rows x (views / rows)
    rows: int = 2
    image_size: int = 32  # per-view size in pixels
    channels: list[int] = field(default_factory=lambda: [48, 96, 128])  # per UNet level
    attention: list[bool] = field(default_factory=lambda: [False, True, True])
    layers_per_block: int = 1
    patch: int = 2  # space-to-depth factor before the UNet
    head_dim: int = 32
    norm_groups: int = 16
    near: float = 1.3  # camera-depth range of the Gaussians
    far: float = 3.1
    min_scale: float = 0.002  # scale range (world units)
    max_scale: float = 0.08
    colour_residual: float = 0.5  # max change of a Gaussian's colour from its pixel's colour


class Reconstructor(GaussianReconstructor):
    """The lab's reconstructor: one implementation of recon.base.GaussianReconstructor."""

    kind = "lab"

    def __init__(self, cfg: ReconConfig):
        super().__init__()
        if cfg.views % cfg.rows:
            raise ValueError(f"recon.views={cfg.views} not divisible by recon.rows={cfg.rows}")
        self.cfg = cfg
        self.record: dict = {}  # recon.json once saved or loaded: its world, how it was trained
        self.weights_path: Path | None = None
        p = cfg.patch
        self.unet = grid_unet(
            cfg.image_size * cfg.rows // p,
            9 * p * p,
            OUT_CHANNELS * p * p,
            cfg.channels,
            cfg.attention,
            cfg.layers_per_block,
            cfg.head_dim,
            cfg.norm_groups,
        )

    @property
    def rig(self) -> ReconRig:
        """The target rig of the world it was trained on (recon.json's train_config.world),
        else the default world's, at the network's image size."""
        world = {**DEFAULT_RIG, **(self.record or {}).get("train_config", {}).get("world", {})}
        els = world.get("target_elevations") or [world["target_elevation"]] * len(
            world["target_azimuths"]
        )
        return ReconRig(
            azimuths=tuple(float(a) for a in world["target_azimuths"]),
            elevations=tuple(float(e) for e in els),
            fov_deg=float(world["fov_deg"]),
            distance=float(world["distance"]),
            image_size=self.cfg.image_size,
            convention="opencv-w2c",
            normalisation="[-1,1]",
        )

    def check_inputs(self, views: Tensor, viewmats: Tensor, Ks: Tensor) -> tuple[Tensor, Tensor]:
        return check_inputs(views, viewmats, Ks, self.cfg.views, self.cfg.image_size)

    def forward(self, views: Tensor, viewmats: Tensor, Ks: Tensor) -> Gaussians:
        """views [B, V, 3, H, W] in [-1, 1]; cameras [V or B x V, 4, 4] and [.., 3, 3]."""
        viewmats, Ks = self.check_inputs(views, viewmats, Ks)
        c = self.cfg
        b, v, _, h, w = views.shape
        origin, dirs = camera_rays(viewmats.to(views), Ks.to(views), w, h, normalize=False)
        unit = dirs / dirs.norm(dim=-1, keepdim=True)
        plk = torch.cat([torch.linalg.cross(origin, unit, dim=-1), unit], -1).movedim(-1, 2)
        x = tile_views(torch.cat([views, plk], 2), c.rows, v // c.rows)
        t = torch.zeros(b, device=views.device, dtype=views.dtype)
        out = self.unet(F.pixel_unshuffle(x, c.patch), t).sample
        out = untile_views(F.pixel_shuffle(out, c.patch), c.rows, v // c.rows)  # [B, V, 12, H, W]
        out = out.movedim(2, -1).reshape(b, v * h * w, OUT_CHANNELS)
        depth = c.near + (c.far - c.near) * torch.sigmoid(out[..., 0:1])
        means = origin.reshape(b, -1, 3) + depth * dirs.reshape(b, -1, 3)
        scales = c.min_scale + (c.max_scale - c.min_scale) * torch.sigmoid(out[..., 2:5])
        quats = out[..., 5:9] + torch.tensor([1.0, 0, 0, 0], device=out.device, dtype=out.dtype)
        pix = ((views + 1) / 2).movedim(2, -1).reshape(b, -1, 3)
        colors = (pix + c.colour_residual * torch.tanh(out[..., 9:12])).clamp(0, 1)
        return Gaussians(
            means=means,
            quats=quats / quats.norm(dim=-1, keepdim=True),
            scales=scales,
            opacities=torch.sigmoid(out[..., 1]),
            colors=colors,
        )

    def save_pretrained(
        self, folder: str | Path, record: dict | None = None, dtype: torch.dtype = torch.float16
    ) -> None:
        """Write ``model.safetensors`` (fp16 by default; loading upcasts) and ``recon.json``
        (with ``record``'s entries)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()},
            folder / "model.safetensors",
        )
        info = {"kind": "reconstructor", "config": asdict(self.cfg), **(record or {})}
        (folder / "recon.json").write_text(json.dumps(info, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Reconstructor:
        """The reconstructor saved in ``folder`` by :meth:`save_pretrained`."""
        folder = Path(folder)
        meta = folder / "recon.json"
        if not meta.exists():
            raise FileNotFoundError(f"{meta} not found: a reconstructor folder needs recon.json")
        info = json.loads(meta.read_text())
        try:
            model = cls(ReconConfig(**info["config"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{folder / 'recon.json'}: bad 'config' entry ({e})") from e
        wpath = folder / "model.safetensors"
        if not wpath.exists():
            raise FileNotFoundError(f"{wpath} not found")
        try:
            sd = load_file(wpath)
        except Exception as e:
            raise ValueError(f"{wpath}: corrupt or unreadable weights file ({e})") from e
        try:
            model.load_state_dict({k: v.float() for k, v in sd.items()})
        except RuntimeError as e:
            msg = str(e).splitlines()[0]
            raise ValueError(f"{wpath}: weights do not match recon.json ({msg})") from e
        model.record = info
        model.weights_path = wpath
        return model.eval()
