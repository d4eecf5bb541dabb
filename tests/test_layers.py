"""The layering of ../shared/DESIGN.md holds: each package imports only from the layers below
it (lazy imports inside functions included), so no import runs back up."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOTTOM = {"samplers", "scenes", "recon"}
ALLOWED = {  # package -> the lab packages it may import
    "samplers": set(),  # the path module imports nothing of ours; samplers take any callable
    "recon": set(),  # knows no diffusion
    "scenes": {"recon"},  # renders the world through recon's rasterizer
    "teachers": BOTTOM,
    "students": BOTTOM | {"teachers"},
    "training": BOTTOM,
    "eval": BOTTOM | {"teachers", "students"},  # nothing from training/ or distill/
    "serve": BOTTOM | {"teachers", "students"},  # nothing from training/, distill/ or eval/
    "distill": BOTTOM | {"teachers", "students", "training", "eval", "serve"},
}


def lab_imports(path: Path) -> set[str]:
    """The lab packages a module imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names} & set(ALLOWED)
    return found


def test_no_import_runs_back_up_the_layers():
    wrong = []
    for pkg, allowed in ALLOWED.items():
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for dep in lab_imports(f) - allowed - {pkg}:
                wrong.append(f"{f.relative_to(ROOT)} imports {dep}")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from distill.config import X\n    import eval.sweep\n")
    assert lab_imports(f) == {"distill", "eval"}
