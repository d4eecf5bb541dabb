"""`distill bench lora`: the network call of a LoRA student, unmerged and merged, against the
teacher's call, in the same run (batch 1, median after warm-up): merging is what makes a
one-step LoRA student cost one teacher call."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from eval.timing import device_name, time_ms


def bench_lora(
    student_dir: str, out: str | Path, repeats: int = 20, batch: int = 1, device: str = "auto"
) -> dict:
    from students.folder import LoadedStudent
    from teachers.io import load_teacher

    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    plain = LoadedStudent.from_pretrained(student_dir).to(dev).eval()
    if getattr(plain.student, "lora_config", None) is None:
        raise ValueError(f"{student_dir} has no LoRA adapters: nothing to merge")
    teacher = load_teacher(plain.card.teacher_dir).to(dev).eval()
    merged = LoadedStudent.from_pretrained(student_dir, teacher=teacher, merge=True).to(dev).eval()
    steps = min(plain.card.steps)
    for m in (plain, merged):
        m.use_steps(steps)
    torch.manual_seed(0)
    x = torch.randn(batch, *teacher.noise_shape(), device=dev)
    t = torch.ones(batch, device=dev)
    cond = torch.rand(batch, 3, teacher.info.image_size, teacher.info.image_size, device=dev)
    kw = {}
    if plain.student.s_embed is not None:
        kw["s"] = torch.ones(batch, device=dev)
    if plain.student.w_embed is not None:
        kw["w"] = torch.ones(batch, device=dev)
    calls = {
        "teacher": lambda: teacher(x, t, cond),
        "student_unmerged": lambda: plain(x, t, cond, **kw),
        "student_merged": lambda: merged(x, t, cond, **kw),
    }
    with torch.inference_mode():
        diff = (plain(x, t, cond, **kw) - merged(x, t, cond, **kw)).abs().max().item()
        # interleave the three so that drift of the machine hits all of them alike
        ms = {k: [] for k in calls}
        for _ in range(3):
            for k, fn in calls.items():
                ms[k].append(time_ms(fn, dev, warmup=2, repeats=repeats))
    res = {k: sorted(v)[1] for k, v in ms.items()}
    report = {
        "student": student_dir,
        "steps": steps,
        "batch": batch,
        "device": device_name(dev),
        "repeats": repeats,
        "call_ms": res,
        "unmerged_over_teacher": res["student_unmerged"] / res["teacher"],
        "merged_over_teacher": res["student_merged"] / res["teacher"],
        "max_abs_output_difference": diff,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(
        f"teacher {res['teacher']:.2f} ms | LoRA student unmerged {res['student_unmerged']:.2f} ms"
        f" ({report['unmerged_over_teacher']:.2f}x) | merged {res['student_merged']:.2f} ms"
        f" ({report['merged_over_teacher']:.2f}x) | outputs differ by at most {diff:.1e}"
    )
    print(f"wrote {out}")
    return report
