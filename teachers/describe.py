"""What a teacher folder is, in words, from its configs alone (``distill teacher inspect``):
family, parametrization, schedule, latent space, grid and cameras, how the condition enters,
view order. Refused folders raise as ``load_teacher`` would."""

from __future__ import annotations

from pathlib import Path

from teachers.base import read_json
from teachers.families import FLOW_SCHEDULERS, Family, classify

PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
ORDER = "row-major over the grid (left to right, then top to bottom)"


def describe(folder: str | Path) -> dict:
    """An ordered dict of what the folder is, keyed by the facts ``inspect`` prints."""
    folder = Path(folder)
    fam = classify(folder)
    head = {"folder": str(folder), "family": fam.name, "found": fam.found}
    if fam.name == "lab":
        return head | _lab(folder)
    if fam.name == "diffusers":
        return head | _generic(folder, fam)
    if fam.name == "zero123plus":
        return head | _zero123plus(folder, fam)
    from teachers.io import MVDREAM_MODULE, mvdream_module

    try:
        return head | mvdream_module(folder, fam.name).describe(folder)
    except ValueError as e:
        return head | {"status": f"cannot load: {e}", "adapter": MVDREAM_MODULE}


def _views(azimuths, elevations) -> str:
    return ", ".join(f"({a:g}, {e:g})" for a, e in zip(azimuths, elevations))


def _lab(folder: Path) -> dict:
    cfg = read_json(folder / "teacher.json", "")["config"]
    rows, views = cfg["rows"], cfg["views"]
    out = {
        "parametrization": f"{cfg['prediction']} on the lab's {cfg['path']} path",
        "schedule": "continuous time t in [0, 1] (t * 1000 into the UNet's time embedding)",
        "latent space": f"pixels (space-to-depth by {cfg.get('patch', 1)} before the UNet)",
        "grid": f"{rows} x {views // rows} of {cfg['image_size']} px views",
        "cameras": "azimuths " + ", ".join(f"{a:g}" for a in cfg["azimuths"])
        + " (elevations: the world recorded in teacher.json)",
        "condition": "condition image and a per-view azimuth code concatenated on channels",
        "view order": ORDER,
    }  # fmt: skip
    if cfg.get("arch") == "v3":
        out["cameras"] = "(azimuth, elevation) " + _views(cfg["azimuths"], cfg["elevations"])
        out["condition"] = (
            "reference attention at every UNet level (the condition through the same UNet), "
            "per-view Pluecker rays relative to the condition camera"
        )
        if cfg.get("concat_condition"):
            out["condition"] += "; the condition image also concatenated on channels"
    return out


def _schedule(sched: dict) -> tuple[str, str]:
    cls = sched.get("_class_name", "?")
    if cls in FLOW_SCHEDULERS:
        return "velocity on the lab's linear path", f"{cls}: t = timestep / num_train_timesteps"
    ptype = sched.get("prediction_type", "epsilon")
    return (
        f"{PREDICTIONS.get(ptype, ptype)} ({ptype}) on the lab's cosine path",
        f"{cls}: {sched.get('num_train_timesteps', 1000)} DDPM timesteps, "
        f"{sched.get('beta_schedule', 'linear')} betas {sched.get('beta_start')}..."
        f"{sched.get('beta_end')}; timestep k <-> lab t with alpha_bar(k) = cos^2(pi t / 2)",
    )


def _vae(folder: Path) -> tuple[int, float, int]:
    v = read_json(folder / "vae" / "config.json", "")
    down = 2 ** (len(v.get("block_out_channels", [0])) - 1)
    return down, float(v.get("scaling_factor", 0.18215)), int(v.get("latent_channels", 4))


def _generic(folder: Path, fam: Family) -> dict:
    sched = read_json(folder / "scheduler" / "scheduler_config.json", "")
    ucfg = read_json(folder / "unet" / "config.json", "")
    param, schedule = _schedule(sched)
    mv = fam.multiview
    rows, cols = int(mv.get("rows", 2)), int(mv.get("cols", 2))
    if (folder / "vae").is_dir():
        down, sf, lat = _vae(folder)
        space, cond_ch = f"VAE latent ({lat} channels, {down}x down, x {sf:g})", lat
    else:
        space, cond_ch = "pixels", 3
    enters = []
    if ucfg.get("in_channels") == ucfg.get("out_channels", 0) + cond_ch:
        enters.append("concatenated on channels (tiled into every view)")
    if ucfg.get("cross_attention_dim"):
        enters.append(
            "cross-attention on the CLIP image embedding (image_encoder/)"
            if (folder / "image_encoder").is_dir()
            else "cross-attention on zeros (no image encoder)"
        )
    cams = (
        _views(mv["azimuths"], mv["elevations"])
        if "azimuths" in mv and "elevations" in mv
        else "not named (add azimuths/elevations to multiview.json, or set world.target_*)"
    )
    return {
        "parametrization": param,
        "schedule": schedule,
        "latent space": space,
        "grid": f"{rows} x {cols} of {mv.get('image_size', '?')} px views",
        "cameras": cams,
        "condition": "; ".join(enters) or "none (unconditional UNet)",
        "view order": ORDER,
    }


def _zero123plus(folder: Path, fam: Family) -> dict:
    from teachers import zero123pp as z

    sched = read_json(folder / "scheduler" / "scheduler_config.json", "")
    param, schedule = _schedule(sched)
    down, sf, lat = _vae(folder)
    mv = fam.multiview
    az = mv.get("azimuths", z.AZIMUTHS)
    el = mv.get("elevations", z.ELEVATIONS["v1.2"])
    named = "from multiview.json" if "elevations" in mv else (
        "v1.2 assumed (a v1.1 folder needs multiview.json with elevations 30, -20, ...)"
    )  # fmt: skip
    return {
        "parametrization": param,
        "schedule": schedule + f"; default grid EulerAncestral, timestep_spacing "
        f"{z.DEFAULT_SPACING} (the folder says {sched.get('timestep_spacing', '?')})",
        "latent space": f"VAE latent ({lat} channels, {down}x down), z = (latent x {sf:g} - "
        f"{z.LATENT_SHIFT}) x {z.LATENT_SCALE}; images scaled by 0.5/0.8 before the VAE",
        "grid": f"{z.ROWS} x {z.COLS} of {mv.get('image_size', z.VIEW_SIZE)} px views",
        "cameras": f"(azimuth, elevation) {_views(az, el)}; azimuth relative to the condition "
        f"view; {named}",
        "condition": "reference attention (the condition latent, noised to the same t, as extra "
        "keys/values of every self-attention) + CLIP text of '' plus ramped CLIP image "
        "embedding (ramping_coefficients) by cross-attention; CFG's null branch: the zero image "
        "and text of '' alone",
        "view order": ORDER,
    }  # fmt: skip
