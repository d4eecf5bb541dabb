"""The lab teacher v3: Pluecker rays relative to the condition camera, the condition through
reference attention only, its folder, `distill teacher train` and a student distilled from it."""

import json
import shutil

import pytest
import torch
from tiny_util import ROOT, smoke_train_args, student_inputs

from distill.methods import METHODS
from recon.cameras import intrinsics, look_at, orbit_viewmat
from teachers.lab import LabTeacher, LabTeacherConfig, lab_cameras, relative_rays
from teachers.reference_attention import ReferenceAttnProcessor


def tiny_v3_config(**kw) -> LabTeacherConfig:
    base = dict(image_size=16, channels=[16, 32], attention=[True, True], norm_groups=8, head_dim=8)
    return LabTeacherConfig(**{"arch": "v3", **base, **kw})


def tiny_v3(seed: int = 0, **kw) -> LabTeacher:
    torch.manual_seed(seed)
    t = LabTeacher(tiny_v3_config(**kw))
    with torch.no_grad():  # small random weights everywhere (diffusers zero-inits the last conv)
        for p in t.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return t.eval()


@pytest.fixture(scope="module")
def tiny_v3_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v3") / "teacher"  # the shipped v3's kind, in miniature
    tiny_v3(prediction="x0", concat_condition=True).save_pretrained(folder, dtype=torch.float32)
    return folder


# --- rays --------------------------------------------------------------------------------------


def test_pluecker_rays_of_a_camera_at_a_known_pose():
    """A camera at (0, 0, -2) with the condition camera's axes: o = (0, 0, -2), so the moment
    o x d is exactly (2 d_y, -2 d_x, 0); directions are unit; the condition camera's own rays
    pass through the frame's origin (zero moment) and its centre pixel looks down +z."""
    size = 5  # odd: the centre pixel's ray is the optical axis
    K = intrinsics(size, size, 40.0).double()
    cam = torch.eye(4, dtype=torch.float64)
    cam[2, 3] = 2.0  # world-to-camera translation: centre at z = -2
    targets, own = relative_rays(torch.eye(4, dtype=torch.float64), cam[None], K, size)
    m, d = targets[0, :3], targets[0, 3:]
    assert torch.allclose(d.norm(dim=0), torch.ones(size, size, dtype=torch.float64))
    want = torch.stack([2 * d[1], -2 * d[0], torch.zeros_like(d[0])])
    assert torch.allclose(m, want, atol=1e-12)
    assert torch.equal(own[:3], torch.zeros_like(own[:3]))
    assert torch.allclose(own[3:, 2, 2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(own[3:], d)  # same axes, same pixels: same directions


def test_rays_depend_only_on_the_cameras_relative_to_the_condition():
    cond = orbit_viewmat(10.0, 5.0, 2.2).double()
    targets = torch.stack([orbit_viewmat(a, 20.0, 2.2) for a in (0, 90, 180, 270)]).double()
    K = intrinsics(8, 8, 40.0).double()
    a_t, a_c = relative_rays(cond, targets, K, 8)
    # move the whole rig rigidly (the world's frame changes): w2c -> w2c @ inv(G)
    G = torch.linalg.inv(look_at(torch.tensor([0.3, -1.0, 0.7], dtype=torch.float64)))
    b_t, b_c = relative_rays(cond @ torch.linalg.inv(G), targets @ torch.linalg.inv(G), K, 8)
    assert torch.allclose(a_t, b_t, atol=1e-12) and torch.allclose(a_c, b_c, atol=1e-12)
    m, d = a_t[:, :3], a_t[:, 3:]
    assert torch.allclose(d.norm(dim=1), torch.ones_like(d[:, 0]))
    assert (m * d).sum(1).abs().max() < 1e-12  # the moment is orthogonal to the direction
    assert m.norm(dim=1).amax() > 0.1  # the target cameras are not at the condition's centre


def test_the_teachers_rays_are_its_rig_relative_to_the_condition_camera():
    """View 0 shares the condition camera's azimuth and differs by elevation only: a rotation
    about the camera's x axis, so each pixel's direction keeps its x component."""
    t = tiny_v3()
    cfg = t.cfg
    want, own = relative_rays(*lab_cameras(cfg), cfg.image_size)
    assert torch.equal(t.target_rays, want.float()) and torch.equal(t.cond_rays, own.float())
    assert t.target_rays.shape == (4, 6, 16, 16)
    assert cfg.azimuths[0] == cfg.cond_azimuth and cfg.elevations[0] != cfg.cond_elevation
    assert torch.allclose(want[0, 3], own[3], atol=1e-12)  # d_x, view 0 vs the condition
    assert not torch.allclose(want[0, 4], own[4])  # d_y moves with the elevation


# --- the condition's path ----------------------------------------------------------------------


def test_the_condition_enters_only_by_reference_attention_at_every_level():
    t = tiny_v3()
    x, tt, cond = student_inputs()
    cond2 = cond.clone()
    cond2[1] = -cond2[1]  # change sample 1's condition only
    calls = []
    hook = t.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].clone()))
    with torch.no_grad():
        a, b = t(x, tt, cond), t(x, tt, cond2)
    hook.remove()
    ref_a, main_a, ref_b, main_b = calls  # the reference pass, then the main pass, per call
    assert ref_a.shape == (2, 36, 8, 8) and main_a.shape == (2, 36, 16, 16)
    assert torch.equal(main_a, main_b) and not torch.equal(ref_a, ref_b)  # cond: reference only
    assert torch.allclose(a[0], b[0], atol=1e-6)  # sample 0's own condition did not change
    assert (a[1] - b[1]).abs().max() > 1e-4  # sample 1's did: its output moves
    t.reference = False  # the main pass alone: the condition has no way in
    with torch.no_grad():
        assert torch.equal(t(x, tt, cond), t(x, tt, cond2))


def test_concat_condition_adds_the_condition_on_channels_to_every_view_and_the_reference():
    """v3 with concat_condition: each view's input is (view, condition, rays) and the reference
    pass's (condition, condition, own rays); the condition then reaches the output even with the
    reference pass off, and changes nothing of another sample."""
    t = tiny_v3(concat_condition=True)
    x, tt, cond = student_inputs()
    cond2 = cond.clone()
    cond2[1] = -cond2[1]
    calls = []
    hook = t.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].clone()))
    with torch.no_grad():
        a, b = t(x, tt, cond), t(x, tt, cond2)
    hook.remove()
    ref, main = calls[0], calls[1]
    assert ref.shape == (2, 48, 8, 8) and main.shape == (2, 48, 16, 16)  # 3 + 3 + 6 channels x 4
    views = torch.pixel_shuffle(main, 2)  # the 2 x 2 grid of views [B, 12, 32, 32]
    for r, c in ((0, 0), (0, 1), (1, 0), (1, 1)):  # every tile carries the condition on 3..5
        tile = views[:, 3:6, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]
        assert torch.equal(tile, cond)
    ref_img = torch.pixel_shuffle(ref, 2)
    assert torch.equal(ref_img[:, :3], cond) and torch.equal(ref_img[:, 3:6], cond)
    assert torch.equal(ref_img[:, 6:], t.cond_rays[None].expand(2, 6, 16, 16))
    assert torch.allclose(a[0], b[0], atol=1e-6) and (a[1] - b[1]).abs().max() > 1e-4
    t.reference = False  # the main pass alone still reads the condition from its channels
    with torch.no_grad():
        c, d = t(x, tt, cond), t(x, tt, cond2)
    assert torch.allclose(c[0], d[0], atol=1e-6) and (c[1] - d[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="concat_condition is a v3 option"):
        LabTeacher(tiny_v3_config(arch="concat", concat_condition=True))


@pytest.mark.parametrize("reference_time", ["same", "zero"])
def test_the_reference_pass_runs_at_its_configured_time(reference_time):
    """ "same": the reference pass takes the main pass's timestep (Zero123++); "zero": t = 0,
    the clean condition read as clean, so its recorded tokens do not depend on t."""
    t = tiny_v3(reference_time=reference_time)
    x, tt, cond = student_inputs()
    steps = []
    hook = t.unet.register_forward_pre_hook(lambda m, args: steps.append(args[1].clone()))
    with torch.no_grad():
        t(x, tt, cond)
    hook.remove()
    ref_t, main_t = steps
    assert torch.equal(main_t, tt * 1000)  # TIME_SCALE: the UNet's timestep range
    assert torch.equal(ref_t, main_t if reference_time == "same" else torch.zeros_like(tt))
    with pytest.raises(ValueError, match="teacher.reference_time='noisy'; valid: same, zero"):
        LabTeacher(tiny_v3_config(reference_time="noisy"))


def test_every_attention_appends_the_reference_tokens():
    t = tiny_v3()
    procs = {
        n: m.processor
        for n, m in t.unet.named_modules()
        if isinstance(getattr(m, "processor", None), ReferenceAttnProcessor)
    }
    assert {n.split(".")[0] for n in procs} == {"down_blocks", "mid_block", "up_blocks"}
    assert {n.split(".")[1] for n in procs if not n.startswith("mid")} == {"0", "1"}  # levels
    seen = []
    for p in procs.values():

        def spy(attn, hs, ehs=None, mask=None, temb=None, inner=p.inner, bank=p.bank):
            seen.append((bank.mode, hs.shape[-2] * hs.shape[-1], None if ehs is None else ehs))
            return inner(attn, hs, ehs, mask, temb)

        p.inner = spy
    with torch.no_grad():
        t(*student_inputs())
    reads = [(n, kv) for mode, n, kv in seen if mode == "read"]
    assert len(reads) == len(procs) and len([1 for s in seen if s[0] == "write"]) == len(procs)
    for n, kv in reads:  # keys/values: the grid's n tokens + one view's n / 4
        assert kv.shape[1] == n + n // 4


def test_v3_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match=r"arch=v3 needs attention at every level.*\[False, True"):
        LabTeacher(tiny_v3_config(attention=[False, True]))
    with pytest.raises(ValueError, match="teacher.arch='v4'; valid: concat, v3"):
        LabTeacher(tiny_v3_config(arch="v4"))
    with pytest.raises(ValueError, match="teacher.elevations needs 4 entries, got 2"):
        LabTeacher(tiny_v3_config(elevations=[20.0, 20.0]))


def test_teacher_train_refuses_a_v3_teacher_off_the_worlds_rig():
    from distill.teacher_cmd import check_teacher_rig
    from scenes.world import WorldConfig

    check_teacher_rig(tiny_v3_config(), WorldConfig(image_size=16))  # the defaults agree
    with pytest.raises(ValueError, match=r"condition camera: teacher \(0.0, 5.0\) vs world"):
        check_teacher_rig(tiny_v3_config(), WorldConfig(image_size=16, cond_elevation=10.0))
    with pytest.raises(ValueError, match="fov_deg: teacher 40.0 vs world 50.0"):
        check_teacher_rig(tiny_v3_config(), WorldConfig(image_size=16, fov_deg=50.0))


# --- the folder --------------------------------------------------------------------------------


def test_v3_folder_round_trip_restores_the_same_outputs(tiny_v3_dir):
    from teachers.io import load_teacher

    before = LabTeacher.from_pretrained(tiny_v3_dir)
    loaded = load_teacher(tiny_v3_dir)
    assert loaded.cfg.arch == "v3" and loaded.record["config"]["arch"] == "v3"
    assert loaded.cfg.concat_condition and loaded.record["config"]["concat_condition"]
    x, t, cond = student_inputs()
    with torch.no_grad():
        want = before(x, t, cond)
        assert torch.equal(loaded(x, t, cond), want)
    again = tiny_v3_dir.parent / "again"
    loaded.save_pretrained(again, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(load_teacher(again)(x, t, cond), want)
    assert load_teacher(again).weights_key() == loaded.weights_key()


def test_a_folder_without_arch_loads_as_the_concat_teacher(tiny_teacher_dir, tmp_path):
    """Folders saved before v3 (no arch, no camera fields) load as they always did."""
    from teachers.io import load_teacher

    old = tmp_path / "old"
    shutil.copytree(tiny_teacher_dir, old)
    info = json.loads((old / "teacher.json").read_text())
    for k in ("arch", "elevations", "cond_azimuth", "cond_elevation", "distance", "fov_deg"):
        info["config"].pop(k, None)
    (old / "teacher.json").write_text(json.dumps(info))
    a, b = load_teacher(old), load_teacher(tiny_teacher_dir)
    assert a.cfg.arch == "concat" and not hasattr(a, "reference")
    x, t, cond = student_inputs()
    with torch.no_grad():
        assert torch.equal(a(x, t, cond), b(x, t, cond))


# --- end to end --------------------------------------------------------------------------------


def test_teacher_train_smoke_on_the_tiny_v3_config(tmp_path):
    from distill.cli import main
    from teachers.io import load_teacher

    run = tmp_path / "run"
    args = [
        "teacher", "train", str(ROOT / "configs/teacher/tiny_v3.yaml"), f"run_dir={run}",
        f"data.root={tmp_path / 'data'}", "data.train_count=4", "train.steps=2",
        "train.batch_size=2", "train.warmup=1", "train.log_every=1", "train.ckpt_every=2",
    ]  # fmt: skip
    assert main(args) == 0
    teacher = load_teacher(run / "teacher")
    assert teacher.cfg.arch == "v3" and teacher.record["train_config"]["world"]["version"] == 3
    views, nfe = teacher.sample(torch.zeros(1, 3, 16, 16), 2, [0])
    assert views.shape == (1, 4, 3, 16, 16) and nfe == 2 and torch.isfinite(views).all()
    assert (run / "losses.csv").read_text().startswith("step,lr,elapsed_s,loss")


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_distils_a_tiny_v3_teacher(method, tiny_v3_dir, tiny_data_root, tmp_path):
    """Every method runs on the v3 architecture (reference pass, rays, condition on channels),
    as the shipped students will: two updates, a student that samples finite views."""
    from distill.cli import main
    from students.folder import LoadedStudent

    # the card's val figures are the train smoke tests' to check (eval_count=0)
    run = tmp_path / "run"
    args = smoke_train_args(method, tiny_v3_dir, run, tiny_data_root, 12, "eval_count=0")
    assert main(args[3:]) == 0
    st = LoadedStudent.from_pretrained(run / "student")
    assert st.card.method == method
    assert json.loads((run / "student" / "student.json").read_text())["train_cost"]["updates"] == 2
    _, _, cond = student_inputs()
    views, _ = st.sample(cond, st.card.steps[0], [0, 1])
    assert views.shape == (2, 4, 3, 16, 16) and torch.isfinite(views).all()
