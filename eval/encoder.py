"""The lab's in-domain feature encoder for FID/KID: a small CNN trained on world views to
predict what the generator chose (primitive kinds, stripes, base colours). Its penultimate
layer is the feature space; ImageNet Inception features mean little on 32px procedural objects
(and their weights cannot be downloaded here)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn


class FeatureEncoder(nn.Module):
    num_features = 128  # size of the feature space

    def __init__(self, n_outputs: int = 11, width: int = 32):
        super().__init__()

        def block(i, o, stride):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.GroupNorm(8, o), nn.SiLU())

        w = width
        self.body = nn.Sequential(
            block(3, w, 1),
            block(w, 2 * w, 2),
            block(2 * w, 4 * w, 2),
            block(4 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * w, self.num_features),
        )
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(self.num_features, n_outputs))
        self.width, self.n_outputs = width, n_outputs

    def forward(self, images: Tensor) -> Tensor:
        """Features [N, 128] of images [N, 3, H, W] in [-1, 1]."""
        return self.body(images.float())

    def predict(self, images: Tensor) -> Tensor:
        return self.head(self.forward(images))

    def save_pretrained(self, folder: str | Path, record: dict) -> None:
        """Write ``model.safetensors`` and ``encoder.json`` (with ``record``'s entries)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors"
        )
        info = {"kind": "feature_encoder", "width": self.width, "n_outputs": self.n_outputs}
        (folder / "encoder.json").write_text(json.dumps({**info, **record}, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> FeatureEncoder:
        """The encoder saved in ``folder`` by :meth:`save_pretrained`."""
        folder = Path(folder)
        meta = folder / "encoder.json"
        if not meta.exists():
            raise FileNotFoundError(f"{meta} not found: not a feature-encoder folder")
        info = json.loads(meta.read_text())
        m = cls(info["n_outputs"], info["width"])
        try:
            m.load_state_dict(load_file(folder / "model.safetensors"))
        except Exception as e:
            raise ValueError(f"{folder / 'model.safetensors'}: cannot load encoder ({e})") from e
        m.record = info
        return m.eval()
