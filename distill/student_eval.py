"""Measured metrics for student folders, and the `distill compare` / `distill sample` commands."""

from __future__ import annotations

import json
from pathlib import Path

from eval.compare import compare_rows, compare_table, teacher_reference
from eval.views import generated_sheet, models_objects, test_objects
from students.folder import LoadedStudent
from students.sampling import sample_views
from teachers.io import load_teacher

REFERENCE_STEPS = 50


def record_metrics(
    folder: str | Path,
    count: int,
    data_root: str,
    teacher_guidance: float = 1.0,
    max_steps: int = 8,
    split: str = "val",
) -> dict:
    """Measure a student at its step counts (up to ``max_steps``) on ``count`` objects of
    ``split`` (val: these quick figures are what a user compares recipes by) and write the
    figures into its student.json."""
    from training.processes import train_device

    folder, device = Path(folder), train_device()
    student = LoadedStudent.from_pretrained(folder).to(device)
    card_path = folder / "student.json"
    card = json.loads(card_path.read_text())
    # the world it was trained on (its card's, else its teacher's): other data is refused
    truth, seeds, ew = models_objects(data_root, split, count, {f"student {folder}": student})
    cond, gt = truth.cond, truth.targets
    teacher = load_teacher(card["teacher_dir"]).to(device)
    ref = teacher_reference(teacher, cond, seeds, REFERENCE_STEPS, guidance=teacher_guidance)
    del teacher
    steps = [s for s in card["steps"] if s <= max_steps]
    rows = compare_rows({"student": student}, cond, gt, seeds, steps, ref)
    card["metrics"] = {
        "eval_objects": count,
        "split": split,
        "world": ew.describe(),
        "reference": f"teacher, {REFERENCE_STEPS} steps",
        "by_steps": {
            str(r["steps"]): {
                k: round(v, 4) if isinstance(v, float) else v
                for k, v in r.items()
                if k not in ("model", "method")
            }
            for r in rows
        },
    }
    card_path.write_text(json.dumps(card, indent=2))
    return card["metrics"]


def compare(
    students: list[str],
    steps_list: list[int],
    count: int,
    data_root: str,
    out: str,
    teacher_dir: str = "shipped/teacher",
    teacher_guidance: float = 1.0,
    sampler: str = "euler",
) -> list[dict]:
    """Evidence table: each student vs the teacher at the same steps and the teacher at 50."""
    teacher = load_teacher(teacher_dir)
    cond, gt, seeds = test_objects(data_root, count, teacher.info.image_size)
    ref = teacher_reference(teacher, cond, seeds, REFERENCE_STEPS, sampler, teacher_guidance)
    models = {"teacher": teacher}
    for s in students:
        models[Path(s).name] = LoadedStudent.from_pretrained(s, teacher=teacher)
    rows = compare_rows(models, cond, gt, seeds, steps_list, ref, sampler, teacher_guidance)
    table = compare_table(rows)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    (outp / "compare.json").write_text(json.dumps({"objects": count, "rows": rows}, indent=2))
    (outp / "compare.md").write_text(table + "\n")
    print(table)
    print(f"wrote {outp / 'compare.json'}")
    return rows


def sample_student(
    folder: str,
    steps: int,
    seed: int,
    count: int,
    out: str,
    data_root: str,
    teacher_dir: str | None = None,
) -> Path:
    st = LoadedStudent.from_pretrained(folder, teacher_dir=teacher_dir)
    cond, gt, _ = test_objects(data_root, count, st.info.image_size)
    views, nfe = sample_views(st, cond, steps, [seed + i for i in range(count)])
    return generated_sheet(
        cond, gt, views, st.card.method, out, f"{st.card.method} student, {steps} steps, NFE {nfe}"
    )
