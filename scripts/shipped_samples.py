"""Record (or check) what the shipped models compute on fixed inputs: the refactor guard.

``python scripts/shipped_samples.py record`` writes ``tests/reference/shipped_samples.safetensors``:
for two val objects of the shipped teacher's world, the teacher's views at 2 and 4 Euler steps,
every shipped student's views at each of its first two supported step counts, and the shipped
reconstructor's Gaussians from the teacher's 4-step views. ``tests/test_shipped.py`` recomputes
them and asks for bit-identical tensors on the machine that recorded them (same torch, same CPU),
and agreement to 1e-5 elsewhere (another CPU's kernels may round differently).
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "shipped"
OUT = ROOT / "tests" / "reference" / "shipped_samples.safetensors"
SEEDS = [11, 12]


def machine() -> str:
    """Where exact equality is expected: torch version, CPU model name, family and model numbers
    and the kernels torch picks (the name alone is "AMD EPYC" on several generations, whose
    kernels round differently: ~1e-6 apart)."""
    cpu = platform.processor() or platform.machine()
    ids = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in ids:
                ids[key] = value.strip()
    except OSError:
        pass
    cpu = ids.get("model name", cpu)
    if "cpu family" in ids:
        cpu += f" (family {ids['cpu family']}, model {ids.get('model', '?')})"
    return f"torch {torch.__version__}; {cpu}; {torch.backends.cpu.get_cpu_capability()}"


def compute(data_root: Path) -> dict[str, torch.Tensor]:
    """Every recorded tensor, by name."""
    from recon.model import Reconstructor
    from scenes.data import make_split
    from scenes.world import model_world
    from students.folder import LoadedStudent
    from teachers.io import load_teacher

    torch.set_num_threads(1)
    teacher = load_teacher(SHIPPED / "teacher")
    world = model_world(teacher.record, teacher.info.image_size)
    make_split(data_root, "val", len(SEEDS), world)
    from scenes.data import WorldDataset

    ds = WorldDataset(data_root, "val", world)
    cond = ds.batch(list(range(len(SEEDS))))["cond"]
    out = {}
    for steps in (2, 4):
        out[f"teacher@{steps}"], _ = teacher.sample(cond, steps, SEEDS, "euler", 1.0)
    for folder in sorted((SHIPPED / "students").iterdir()):
        st = LoadedStudent.from_pretrained(folder, teacher=teacher)
        for steps in st.supported_steps[:2]:
            out[f"{folder.name}@{steps}"], _ = st.sample(cond, steps, SEEDS)
    recon = Reconstructor.from_pretrained(SHIPPED / "recon")
    rig = ds.rig
    g = recon(out["teacher@4"], rig.target_viewmats, rig.K.expand(len(rig.target_viewmats), 3, 3))
    for k in ("means", "quats", "scales", "opacities", "colors"):
        out[f"recon.{k}"] = getattr(g, k)
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def main(argv: list[str]) -> int:
    import tempfile

    from safetensors.torch import save_file

    if argv != ["record"]:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as d:
        tensors = compute(Path(d))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT, metadata={"machine": machine(), "seeds": json.dumps(SEEDS)})
    print(f"wrote {len(tensors)} tensors to {OUT} ({machine()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
