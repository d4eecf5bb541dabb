"""The lab's in-domain feature encoder for FID/KID: a small CNN trained on world views to
predict what the generator chose (primitive kinds, stripes, base colours). Its penultimate
layer is the feature space; ImageNet Inception features mean little on 32px procedural objects
(and their weights cannot be downloaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


class FeatureEncoder(nn.Module):
    num_features = 128  # torchmetrics reads this instead of probing with a 299px image

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

    def save(self, folder: str | Path, meta: dict) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors"
        )
        info = {"kind": "feature_encoder", "width": self.width, "n_outputs": self.n_outputs}
        (folder / "encoder.json").write_text(json.dumps({**info, **meta}, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> FeatureEncoder:
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
        m.info = info
        return m.eval()


def distribution_distances(
    encoder: FeatureEncoder, real: Tensor, fake: Tensor, kid_subset: int = 50
) -> dict[str, float]:
    """FID and KID (torchmetrics, on the encoder's features) between image sets [N, 3, H, W]."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(real.shape[0], fake.shape[0])
    fid = FrechetInceptionDistance(feature=encoder, reset_real_features=False)
    kid = KernelInceptionDistance(
        feature=encoder, subset_size=min(kid_subset, n), reset_real_features=False
    )
    with torch.no_grad():
        for m in (fid, kid):
            m.update(real, real=True)
            m.update(fake, real=False)
        # KID averages over random subsets: draw them from a fixed seed so that a rerun gives
        # the same figure, without touching the caller's random state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            kid_mean, kid_std = kid.compute()
        return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}
