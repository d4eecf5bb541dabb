"""The quality axis: every per-object figure a set of generated views gets against the truth,
and their summaries with 95% bootstrap intervals over objects.

Families: seen-side fidelity (eval/seen.py), unseen-side distribution (eval/unseen.py, world
version 2 only), sharpness and grain (eval/sharpness.py), 3D through the fixed reconstructor
(eval/geometry.py) and FID/KID on the lab encoder (eval/distribution.py)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from eval.distribution import distribution_metrics, features, paired_distribution
from eval.geometry import chamfer, silhouette_iou
from eval.metrics import lpips_distance, psnr, ssim
from eval.seen import (
    _render_depth,
    masked_psnr,
    seen_and_object_masks,
    seen_metrics,
    seen_views,
)
from eval.sharpness import hf_correlation, sharpness_log_error, sharpness_ratio
from eval.stats import SET_BOOTSTRAP, mean_ci, paired_ci, paired_set_ci, set_ci
from eval.unseen import (
    DISAGREE,
    UNREADABLE,
    back_masks,
    fit_pvalue,
    leak,
    legible_views,
    outcome_counts,
    read_objects,
    unseen_distance,
)
from scenes.rig import Rig
from scenes.samples import unpack_gaussians

# per-object metrics and whether higher is better
PER_OBJECT = {
    "seen_psnr": True,
    "seen_psnr_view0": True,
    "seen_ssim": True,
    "sharpness": None,  # 1.0 is best: below is blur, above is grain
    "sharpness_log_error": False,  # per view |log energy ratio|: blur and grain both count
    "hf_correlation": True,  # the truth's detail on seen pixels; noise is not detail
    "averaged_rate": False,  # unseen side: objects whose back is unreadable in a view
    "unseen_disagree_rate": False,  # unseen side: views that show the back read different classes
    "unseen_leak": None,  # [read == own back class] - chance: > 0 where the input shows the back
    "e2e_psnr": True,
    "e2e_ssim": True,
    "consistency_psnr": True,
    "silhouette_iou": True,
    "chamfer": False,
    "view0_psnr": True,
    "unseen_psnr": True,
    "lpips": False,  # only where LPIPS's backbone weights are on disk
}


@dataclass
class Truth:
    """The evaluation objects: conditions, true target and held-out views, true Gaussians,
    back classes (-1 in world version 1) and the rig."""

    cond: Tensor
    targets: Tensor
    heldout: Tensor
    gaussians: Tensor
    back_class: Tensor
    rig: Rig
    world_version: int

    @classmethod
    def from_batch(cls, b: dict, rig: Rig, world_version: int) -> Truth:
        n = b["cond"].shape[0]
        back = b.get("back_class", torch.full((n,), -1, dtype=torch.long))
        return cls(b["cond"], b["targets"], b["heldout"], b["gaussians"], back, rig, world_version)

    def __len__(self) -> int:
        return self.cond.shape[0]


class QualityAxis:
    """Computes every figure of generated views [B, V, 3, H, W] against ``truth``; true-side
    masks, features and renders are computed once. Without a reconstructor the 3D figures are
    left out, without an encoder FID/KID."""

    def __init__(
        self,
        truth: Truth,
        recon,
        encoder,
        batch: int = 32,
        device="cpu",
        lpips=None,
        set_resamples: int = SET_BOOTSTRAP,
    ):
        self.truth, self.recon, self.encoder, self.lpips = truth, recon, encoder, lpips
        self.set_resamples = set_resamples  # subsets per set-statistic interval
        self.batch, self.device = batch, torch.device(device)
        rig = truth.rig
        masks, objs, alphas = [], [], []
        for i in range(0, len(truth), batch):
            g = truth.gaussians[i : i + batch]
            seen, obj = seen_and_object_masks(
                g, rig.target_viewmats, rig.cond_viewmats, rig.K, rig.size
            )
            masks.append(seen)
            objs.append(obj)
            alphas.append(_render_depth(g, rig.heldout_viewmats, rig.K, rig.size)[0])
        self.seen_mask, self.object_mask = torch.cat(masks), torch.cat(objs)
        self.seen_views = seen_views(self.seen_mask, self.object_mask)  # pooled seen figures
        self.heldout_alpha = torch.cat(alphas)
        self.real_features = features(encoder, truth.targets) if encoder is not None else None
        self.truth_means = unpack_gaussians(truth.gaussians).means
        self.has_backs = truth.world_version >= 2
        if self.has_backs:  # the unseen side: where each true view shows its back legibly
            self.back_mask = back_masks(self.seen_mask, self.object_mask)
            self.back_shown = legible_views(truth.targets, self.back_mask, truth.back_class)
            self.back_objects = self.back_shown.any(1)  # the objects the unseen side reads

    def share(self, lo: int, hi: int) -> QualityAxis:
        """This axis on objects ``lo..hi-1`` (one process's share of a sweep, eval/shards.py):
        ``evaluate`` gives those objects the figures the whole axis gives them; the true-side
        features and pooled seen views stay the whole set's."""
        sub, t = copy.copy(self), self.truth
        sub.truth = replace(
            t,
            cond=t.cond[lo:hi],
            targets=t.targets[lo:hi],
            heldout=t.heldout[lo:hi],
            gaussians=t.gaussians[lo:hi],
            back_class=t.back_class[lo:hi],
        )
        sub.seen_mask, sub.object_mask = self.seen_mask[lo:hi], self.object_mask[lo:hi]
        sub.heldout_alpha, sub.truth_means = self.heldout_alpha[lo:hi], self.truth_means[lo:hi]
        if self.has_backs:
            sub.back_mask, sub.back_shown = self.back_mask[lo:hi], self.back_shown[lo:hi]
            sub.back_objects = self.back_objects[lo:hi]
        return sub

    @torch.no_grad()
    def evaluate(self, views: Tensor) -> dict[str, Tensor]:
        """Per-object tensors [B] of every PER_OBJECT metric, plus ``back_read`` [B] and
        ``features`` [B, V, F] for the set metrics."""
        t = self.truth
        out = seen_metrics(views, t.targets, self.seen_mask, self.seen_views)
        out["sharpness"] = sharpness_ratio(views, t.targets, self.object_mask)
        out["sharpness_log_error"] = sharpness_log_error(views, t.targets, self.object_mask)
        out["hf_correlation"] = hf_correlation(views, t.targets, self.seen_mask)
        p = psnr(views, t.targets)
        out["view0_psnr"], out["unseen_psnr"] = p[:, 0], p[:, 1:].mean(1)
        if self.has_backs:
            out.update(self._unseen(views))
        if self.lpips is not None:
            out["lpips"] = self._lpips(views)
        if self.recon is not None:
            out.update(self._three_d(views))
        if self.encoder is not None:
            out["features"] = features(self.encoder, views)
        return out

    def _unseen(self, views: Tensor) -> dict[str, Tensor]:
        """Each object's back read (a class, unreadable or disagree: eval/unseen.py) and its
        per-object figures, NaN for objects whose true views show no legible back."""
        read = read_objects(views, self.back_mask, self.back_shown)
        nan = torch.full(read.shape, float("nan"), dtype=torch.float64)
        keep = self.back_objects
        return {
            "back_read": read,
            "averaged_rate": torch.where(keep, (read == UNREADABLE).double(), nan),
            "unseen_disagree_rate": torch.where(keep, (read == DISAGREE).double(), nan),
            "unseen_leak": torch.where(keep, leak(read, self.truth.back_class), nan),
        }

    def _lpips(self, views: Tensor) -> Tensor:
        """Per-object LPIPS (AlexNet) to the true views, averaged over views."""
        return lpips_distance(self.lpips, views, self.truth.targets).mean(1).double()

    def _three_d(self, views: Tensor) -> dict[str, Tensor]:
        from eval.recon_eval import render_images, render_with_alpha

        rig, dev = self.truth.rig, self.device
        vm, K = rig.target_viewmats.to(dev), rig.K.to(dev)
        res = {
            k: [] for k in ("e2e_psnr", "e2e_ssim", "consistency_psnr", "chamfer", "silhouette_iou")
        }
        for i in range(0, views.shape[0], self.batch):
            v = views[i : i + self.batch].to(dev)
            g = self.recon(v, vm, K.expand(len(vm), 3, 3))
            ren, alpha = render_with_alpha(g, rig.heldout_viewmats.to(dev), K, rig.size)
            ren = ren.cpu()
            held = self.truth.heldout[i : i + self.batch]
            res["e2e_psnr"].append(psnr(ren, held).mean(1))
            res["e2e_ssim"].append(ssim(ren, held).mean(1))
            res["silhouette_iou"].append(
                silhouette_iou(alpha.cpu(), self.heldout_alpha[i : i + self.batch])
            )
            res["chamfer"].append(
                chamfer(g.means.cpu(), g.opacities.cpu(), self.truth_means[i : i + self.batch])
            )
            back = render_images(g, vm, K, rig.size).cpu()
            res["consistency_psnr"].append(psnr(back, views[i : i + self.batch]).mean(1))
        return {k: torch.cat(v) for k, v in res.items()}

    # --- summaries ---------------------------------------------------------------------------
    def summary(self, m: dict[str, Tensor]) -> dict[str, float]:
        """Each metric with its ``_ci95`` bootstrap half-width over objects."""
        row: dict[str, float] = {"objects": len(self.truth)}
        for k in PER_OBJECT:
            if k in m:
                row[k], row[k + "_ci95"] = mean_ci(m[k])
        if "back_read" in m:
            row.update(self._unseen_summary(m["back_read"][self.back_objects]))
        if "features" in m:
            k = self.set_resamples
            row.update(distribution_metrics(self.real_features, m["features"], k))
        return row

    def _unseen_summary(self, read: Tensor) -> dict:
        """Set figures of the back reads of the objects that show their back: the distance to
        the known distribution with its interval, the goodness-of-fit p-value, the outcome
        counts, and whether the leak's 95% lower bound exceeds 0 (``unseen_leak`` is per object;
        one cell's test: a sweep corrects the flag across its cells, eval.report.leak_tests)."""
        row: dict = {"unseen_objects": len(read)}
        row["unseen_dist"], row["unseen_dist_ci95"] = set_ci(
            lambda idx: unseen_distance(read[idx]), len(read), self.set_resamples
        )
        row["unseen_fit_p"] = fit_pvalue(read)
        row.update({f"unseen_{k}": v for k, v in outcome_counts(read).items()})
        lv = leak(read, self.truth.back_class[self.back_objects])
        lo = lv.mean() - mean_ci(lv)[1] if len(lv) > 1 else float("nan")
        row["unseen_leaks"] = bool(lo > 0)
        return row

    def paired(self, a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, float]:
        """a - b for each metric on the same objects, with paired 95% half-widths."""
        row: dict[str, float] = {}
        for k in PER_OBJECT:
            if k in a and k in b:
                row[k + "_diff"], row[k + "_diff_ci95"] = paired_ci(a[k], b[k])
        if "back_read" in a and "back_read" in b:
            ra, rb = a["back_read"][self.back_objects], b["back_read"][self.back_objects]
            row["unseen_dist_diff"], row["unseen_dist_diff_ci95"] = paired_set_ci(
                lambda idx: unseen_distance(ra[idx]),
                lambda idx: unseen_distance(rb[idx]),
                len(ra),
                self.set_resamples,
            )
        if "features" in a and "features" in b:
            fa, fb, k = a["features"], b["features"], self.set_resamples
            row.update(paired_distribution(self.real_features, fa, fb, k))
        return row


def copy_baseline(truth: Truth, seen_mask: Tensor) -> Tensor:
    """Per-object view-0 seen-side PSNR of copying the condition image into view 0."""
    return masked_psnr(truth.cond, truth.targets[:, 0], seen_mask[:, 0])
