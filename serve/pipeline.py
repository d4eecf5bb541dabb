"""Image -> views -> 3D Gaussians in one call, for notebooks and for the server.

pipe = Pipeline.from_pretrained("shipped/students/shortcut", "shipped/recon")
views, gaussians, timings = pipe(images, steps=1, seed=0)
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from recon.base import GaussianReconstructor
from recon.gaussians import Gaussians
from recon.io import load_reconstructor
from students.folder import LoadedStudent
from students.sampling import sample_views
from teachers.io import load_teacher

TEACHER_STEPS = [1, 2, 4, 8, 16, 25, 50]  # step counts a teacher is served at


@dataclass
class Timings:
    diffusion_ms: float
    recon_ms: float
    total_ms: float


class Pipeline:
    """A teacher or student folder plus the fixed reconstructor."""

    def __init__(
        self,
        model,
        recon: GaussianReconstructor,
        name: str,
        folder: Path,
        device: torch.device,
        sampler: str = "euler",
        guidance: float = 1.0,
    ):
        self.model, self.recon, self.name, self.folder = model, recon, name, folder
        self.device, self.sampler, self.guidance = device, sampler, guidance
        from scenes.model_views import check_views_fit, recon_world
        from scenes.rig import make_rig

        world = recon_world(recon)  # the rig the reconstructor takes, in the lab's world
        self.recon_views = check_views_fit(model, world, str(folder))  # None: all, in order
        self.rig = make_rig(world)
        self.image_size = recon.rig.image_size
        self.method = model.method
        self.steps = model.supported_steps or TEACHER_STEPS
        self.weights = model.weights_key()
        card = folder / "student.json"
        self.card = (
            json.loads(card.read_text())
            if card.exists()
            else {"method": self.method, "steps": self.steps, "weights": self.weights}
        )
        self.default_steps = min(self.steps) if self.method != "teacher" else 50
        self.compiled = False  # torch.compile'd networks (compile())

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        reconstructor_dir: str | Path,
        teacher_dir: str | Path | None = None,
        device: str = "auto",
        teacher=None,
        merge_lora: bool = True,
    ) -> Pipeline:
        """Load a student (folder with student.json) or a teacher folder, and the reconstructor.
        A LoRA student samples with its adapters merged into a private copy of the weights
        unless ``merge_lora`` is false."""
        dev = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        folder = Path(model_dir)
        if (folder / "student.json").exists():
            model = LoadedStudent.from_pretrained(
                folder, teacher=teacher, teacher_dir=teacher_dir, merge=merge_lora
            )
        else:
            model = load_teacher(folder)
        recon = load_reconstructor(reconstructor_dir)  # the lab's or an LGM folder
        if model.info.image_size != recon.rig.image_size:
            raise ValueError(
                f"{folder} makes {model.info.image_size}px views but the reconstructor takes "
                f"{recon.rig.image_size}px"
            )
        return cls(model.to(dev).eval(), recon.to(dev).eval(), folder.name, folder, dev)

    def compile(self, channels_last: bool = True) -> Pipeline:
        """Compile the networks this pipeline calls (``torch.compile``, in place: every caller
        of the modules gets the compiled path), with channels-last weights where asked. Shapes
        are per batch size: the first call at each batch size compiles. Outputs equal the eager
        ones within float tolerance (tests/serve/test_compile.py, ``distill bench compile``)."""
        nets = [getattr(self.model, "student", None) or self.model, self.recon]
        for net in nets:
            if channels_last:
                net.to(memory_format=torch.channels_last)
            net.compile()
        self.compiled = True
        return self

    def check_steps(self, steps: int | None) -> int:
        steps = self.default_steps if steps is None else int(steps)
        if steps not in self.steps:
            raise ValueError(f"{self.name} does not support {steps} steps; supported: {self.steps}")
        return steps

    @torch.inference_mode()
    def __call__(
        self, images, steps: int | None = None, seed: int | list[int] | None = None
    ) -> tuple[Tensor, Gaussians, Timings]:
        """images: [B, 3, H, W] in [-1, 1] (or PIL images / PNG bytes); one seed per image."""
        cond = self.prepare(images)
        steps = self.check_steps(steps)
        b = cond.shape[0]
        if seed is None:
            seeds = [int(torch.randint(0, 2**31 - 1, (1,))) for _ in range(b)]
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(b)]
        else:
            seeds = [int(s) for s in seed]
        t0 = time.perf_counter()
        views, _ = sample_views(
            self.model, cond, steps, seeds, self.sampler, self.guidance, batch=max(b, 1)
        )
        t1 = time.perf_counter()
        vm = self.rig.target_viewmats.to(self.device)
        rv = views if self.recon_views is None else views[:, self.recon_views]  # the rig's views
        g = self.recon(rv.to(self.device), vm, self.rig.K.expand(len(vm), 3, 3).to(self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        return (
            views,
            g.map(lambda t: t.float().cpu()),
            Timings((t1 - t0) * 1000, (t2 - t1) * 1000, (t2 - t0) * 1000),
        )

    def prepare(self, images, resize: bool = True) -> Tensor:
        """A condition batch [B, 3, S, S] in [-1, 1] from tensors, PIL images or PNG/JPEG bytes."""
        if isinstance(images, Tensor):
            x = images if images.ndim == 4 else images[None]
        else:
            items = images if isinstance(images, list | tuple) else [images]
            x = torch.stack([decode_image(i) for i in items])
        if x.shape[1] != 3:
            raise ValueError(f"images must have 3 channels, got {tuple(x.shape)}")
        s = self.image_size
        if x.shape[-2:] != (s, s) and not resize:
            raise ValueError(f"images must be {s}x{s}, got {x.shape[-1]}x{x.shape[-2]}")
        return self.resize(x, s)

    @staticmethod
    def resize(x: Tensor, size: int) -> Tensor:
        """[B, 3, H, W] -> [B, 3, size, size] in [-1, 1] (antialiased bilinear when it differs)."""
        if x.shape[-2:] != (size, size):
            x = F.interpolate(
                x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return x.float().clamp(-1, 1)


IMAGE_FORMATS = ("PNG", "JPEG")  # the formats the service documents and decodes
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I")  # 16-bit greyscale PNGs open in these modes


def decode_image(data, max_pixels: int | None = None) -> Tensor:
    """PNG/JPEG bytes or a PIL image -> [3, H, W] in [-1, 1], composited on white.

    Bytes are checked against ``max_pixels`` from the header alone, before any pixel is
    decoded (an image bomb costs nothing); 16-bit greyscale is scaled by its own range."""
    if isinstance(data, bytes | bytearray):
        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except Exception:  # noqa: BLE001  (Pillow raises several kinds; none is the client's concern)
            raise ValueError(
                "not a readable PNG/JPEG image (the formats accepted are PNG and JPEG)"
            ) from None
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ValueError(
                f"image of {img.width}x{img.height} pixels exceeds the limit of {max_pixels} pixels"
            )
        try:
            img.load()
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"not a readable PNG/JPEG image ({type(e).__name__})") from None
    else:
        img = data
    if img.mode in _SIXTEEN_BIT:
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        rgb = np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=-1)
    else:
        a = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        rgb = a[..., :3] * a[..., 3:] + (1 - a[..., 3:])
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1) * 2 - 1


def encode_png(image: Tensor) -> bytes:
    """[3, H, W] in [-1, 1] -> PNG bytes."""
    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def ply_bytes(g: Gaussians, min_opacity: float = 1.0 / 255.0) -> bytes:
    """The standard 3DGS PLY of one Gaussian set, without the invisible Gaussians."""
    from recon.gaussians import ply_encode

    keep = g.opacities >= min_opacity
    return ply_encode(g.map(lambda t: t[keep]))
