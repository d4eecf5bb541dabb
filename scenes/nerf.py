"""Posed renders in the NeRF-synthetic folder format (transforms.json + RGBA PNGs).

Blender/OpenGL camera-to-world matrices are converted to the lab's OpenCV world-to-camera at
load time; images are composited on white and returned in [-1, 1].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from recon.cameras import opengl_c2w_to_viewmat, viewmat_to_opengl_c2w


@dataclass
class PosedImages:
    images: Tensor  # [N, 3, H, W] in [-1, 1]
    viewmats: Tensor  # [N, 4, 4] OpenCV world-to-camera
    Ks: Tensor  # [N, 3, 3]


def load_nerf_folder(folder: str | Path, split: str | None = None) -> PosedImages:
    """Read ``transforms.json`` (or ``transforms_<split>.json``) and its images."""
    folder = Path(folder)
    name = "transforms.json" if split is None else f"transforms_{split}.json"
    path = folder / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (a NeRF-synthetic folder needs {name})")
    meta = json.loads(path.read_text())
    if "camera_angle_x" not in meta or not meta.get("frames"):
        raise ValueError(f"{path}: needs 'camera_angle_x' and a non-empty 'frames' list")
    images, viewmats, Ks = [], [], []
    for i, fr in enumerate(meta["frames"]):
        if "file_path" not in fr or "transform_matrix" not in fr:
            raise ValueError(f"{path}: frame {i} needs 'file_path' and 'transform_matrix'")
        img_path = folder / fr["file_path"]
        if img_path.suffix == "":
            img_path = img_path.with_suffix(".png")
        rgba = np.asarray(Image.open(img_path).convert("RGBA"), dtype=np.float32) / 255.0
        rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])  # on white
        images.append(torch.from_numpy(rgb).permute(2, 0, 1) * 2 - 1)
        c2w = torch.tensor(fr["transform_matrix"], dtype=torch.float64)
        if c2w.shape != (4, 4):
            raise ValueError(f"{path}: frame {i} transform_matrix must be 4x4")
        viewmats.append(opengl_c2w_to_viewmat(c2w).float())
        h, w = rgb.shape[:2]
        fx = 0.5 * w / math.tan(0.5 * float(meta["camera_angle_x"]))
        fy = fx
        if "camera_angle_y" in meta:
            fy = 0.5 * h / math.tan(0.5 * float(meta["camera_angle_y"]))
        Ks.append(torch.tensor([[fx, 0, 0.5 * w], [0, fy, 0.5 * h], [0, 0, 1.0]]))
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) != 1:
        raise ValueError(f"{path}: images differ in size: {sorted(sizes)}")
    return PosedImages(torch.stack(images), torch.stack(viewmats), torch.stack(Ks))


def write_nerf_folder(
    folder: str | Path, images: Tensor, alphas: Tensor, viewmats: Tensor, K: Tensor
) -> None:
    """Write images [N,3,H,W] in [-1,1] with alphas [N,1,H,W] as RGBA PNGs + transforms.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w = images.shape[-1]
    frames = []
    for i in range(images.shape[0]):
        a = alphas[i].clamp(0, 1)
        # un-composite from white so that loading composites back to the same image
        rgb_white = (images[i] + 1) / 2
        rgb = torch.where(
            a > 0, (rgb_white - (1 - a)) / a.clamp_min(1e-6), torch.ones_like(rgb_white)
        )
        rgba = torch.cat([rgb.clamp(0, 1), a], 0).permute(1, 2, 0).numpy()
        Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").save(folder / f"r_{i}.png")
        c2w = viewmat_to_opengl_c2w(viewmats[i].double())
        frames.append({"file_path": f"./r_{i}", "transform_matrix": c2w.tolist()})
    angle_x = 2 * math.atan(0.5 * w / float(K[0, 0]))
    (folder / "transforms.json").write_text(
        json.dumps({"camera_angle_x": angle_x, "frames": frames}, indent=1)
    )
