"""Students: built from the teacher they equal until trained, saved and loaded as folders, LoRA
merged for inference."""

import pytest
import torch
from tiny_util import student_card, student_inputs

from students.folder import LoadedStudent
from students.module import Student, StudentConfig
from teachers.io import load_teacher


@pytest.mark.parametrize("lora", [0, 4])
def test_untrained_student_equals_teacher(tiny_teacher_dir, lora):
    t = load_teacher(tiny_teacher_dir)
    s = Student(t, StudentConfig(lora_rank=lora, second_time=True, guidance_input=True))
    x, tt, c = student_inputs()
    with torch.no_grad():
        a = t(x, tt, c)
        b = s(x, tt, c, s=torch.rand(2), w=torch.rand(2) * 3)
    assert torch.equal(a, b)
    trainable = [n for n, p in s.named_parameters() if p.requires_grad]
    if lora:
        assert all("lora" in n or "embed" in n for n in trainable)


def test_velocity_student_of_an_x0_teacher_starts_as_the_teacher(tiny_x0_teacher_dir):
    """A student declared in velocity (MeanFlow, reflow) of an x0 network outputs, untrained, the
    teacher's own velocity (x_t - x0) / t; below NET_T_MIN the division is by NET_T_MIN."""
    from students.module import NET_T_MIN

    t = load_teacher(tiny_x0_teacher_dir)
    s = Student(t, StudentConfig(lora_rank=4, second_time=True), "linear", "velocity")
    x, _, c = student_inputs()
    tt = torch.tensor([0.5, 0.01])
    with torch.no_grad():
        x0 = t(x, tt, c)
        v = s(x, tt, c, s=torch.rand(2))
    assert torch.allclose(v[0], (x[0] - x0[0]) / 0.5, atol=1e-5)
    assert torch.allclose(v[1], (x[1] - x0[1]) / NET_T_MIN, atol=1e-5)
    # the teacher's sampler and the student's agree: one Euler step from t = 1 lands on x0
    one = torch.ones(2)
    with torch.no_grad():
        assert torch.allclose(x - s(x, one, c, s=one), t(x, one, c), atol=1e-5)


def test_consistency_boundary(tiny_teacher_dir):
    t = load_teacher(tiny_teacher_dir)
    s = Student(t, StudentConfig(boundary=True))
    c_skip, c_out = s.c_skip_out(torch.tensor([0.0, 0.5]))
    assert c_skip[0] == 1 and c_out[0] == 0 and c_out[1] > 0.99
    x, _, c = student_inputs()
    with torch.no_grad():
        assert torch.equal(s(x, torch.zeros(2), c), x)
    assert s.prediction == "x0"


@pytest.mark.parametrize("lora", [0, 4])
def test_student_folder_round_trip_and_teacher_mismatch(tiny_teacher_dir, tmp_path, lora):
    t = load_teacher(tiny_teacher_dir)
    s = Student(t, StudentConfig(lora_rank=lora, second_time=True))
    with torch.no_grad():
        for p in s.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    card = student_card(s, tiny_teacher_dir, path="linear", prediction="velocity")
    s.save_pretrained(tmp_path / "st", card, dtype=torch.float32)
    back = LoadedStudent.from_pretrained(tmp_path / "st")
    sa, sb = s.trainable_state(), back.student.trainable_state()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x, tt, c = student_inputs()
    d = torch.full((2,), 0.5)
    with torch.no_grad():
        assert torch.equal(s(x, tt, c, s=d), back(x, tt, c, s=d))
    with pytest.raises(ValueError, match="does not support 3 steps; supported: \\[1, 2\\]"):
        back.use_steps(3)
    other = load_teacher(tiny_teacher_dir)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    other._weights_key = ""  # weights changed in memory: the key comes from the tensors
    with pytest.raises(ValueError, match="was made from teacher weights"):
        LoadedStudent.from_pretrained(tmp_path / "st", teacher=other)


def test_merged_lora_student_matches_and_drops_the_adapters(tiny_teacher_dir, tmp_path):
    from peft.tuners.lora import LoraLayer

    from students.lora import merged_copy

    t = load_teacher(tiny_teacher_dir)
    torch.manual_seed(3)
    s = Student(t, StudentConfig(lora_rank=4, second_time=True))
    with torch.no_grad():  # non-zero adapters (LoRA's B starts at zero)
        for n, p in s.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.05)
    x, tt, c = student_inputs()
    d = torch.rand(2)
    m = merged_copy(s)
    assert not any(isinstance(mod, LoraLayer) for mod in m.modules())
    assert any(isinstance(mod, LoraLayer) for mod in s.modules())  # the original keeps them
    assert sum(p.numel() for p in m.net.parameters()) == sum(p.numel() for p in t.parameters())
    with torch.no_grad():
        a, b = s(x, tt, c, s=d), m(x, tt, c, s=d)
    assert (a - t(x, tt, c)).abs().max() > 1e-3  # the adapters change the output
    assert torch.allclose(a, b, atol=1e-5)
    # a saved LoRA student loaded with merge=True samples like the unmerged one
    card = student_card(s, tiny_teacher_dir, path="linear", prediction="velocity")
    s.save_pretrained(tmp_path / "st", card, dtype=torch.float32)
    plain = LoadedStudent.from_pretrained(tmp_path / "st")
    merged = LoadedStudent.from_pretrained(tmp_path / "st", merge=True)
    cond = torch.rand(2, 3, 16, 16) * 2 - 1
    v1, _ = plain.sample(cond, 2, [1, 2])
    v2, _ = merged.sample(cond, 2, [1, 2])
    assert torch.allclose(v1, v2, atol=1e-4)
    assert not any(isinstance(mod, LoraLayer) for mod in merged.runner().modules())
