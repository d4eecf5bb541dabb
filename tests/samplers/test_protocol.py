"""The sampleable protocol is declared once (samplers/protocol.py) and filled by every model that
is sampled: the lab teacher, a diffusers teacher and a student loaded from its folder."""

import hashlib
import inspect
import json

import torch
from diffusers import DDPMScheduler
from tiny_util import pixel_unet, student_card, tiny_student

from samplers.protocol import Sampleable, file_key, folder_key, tensors_key
from students.folder import LoadedStudent
from teachers.io import load_teacher

MEMBERS = [n for n in Sampleable.__annotations__] + [
    "__call__",
    "sample",
    "weights_key",
    "noise_shape",
    "decode",
]


def _fills_protocol(model) -> None:
    assert isinstance(model, Sampleable), type(model).__name__
    for name in MEMBERS:
        assert hasattr(model, name), name
    want = list(inspect.signature(Sampleable.sample).parameters)[1:]
    assert list(inspect.signature(model.sample).parameters) == want
    key = model.weights_key()
    assert isinstance(key, str) and len(key) == 16 and int(key, 16) >= 0


def test_lab_teacher_fills_the_protocol(tiny_teacher_dir):
    t = load_teacher(tiny_teacher_dir)
    _fills_protocol(t)
    assert t.method == "teacher" and t.supported_steps is None and t.own_sampler is None


def test_diffusers_teacher_fills_the_protocol(tmp_path):
    folder = tmp_path / "px"
    pixel_unet().save_pretrained(folder / "unet")
    DDPMScheduler(prediction_type="v_prediction").save_pretrained(folder / "scheduler")
    (folder / "multiview.json").write_text(json.dumps({"rows": 2, "cols": 2, "image_size": 8}))
    _fills_protocol(load_teacher(folder))


def test_loaded_student_fills_the_protocol(tiny_teacher_dir, tmp_path):
    t = load_teacher(tiny_teacher_dir)
    s = tiny_student(t, "shortcut", noise=0.01)
    s.save_pretrained(tmp_path / "st", student_card(s, tiny_teacher_dir))
    st = LoadedStudent.from_pretrained(tmp_path / "st")
    _fills_protocol(st)
    assert st.method == "shortcut" and st.supported_steps == [1, 2]
    assert st.own_sampler == "shortcut"
    assert st.weights_key() == folder_key(tmp_path / "st")


def test_the_weights_key_is_one_16_hex_sha256(tmp_path):
    # sha256 of nothing: e3b0c442 98fc1c14 ...; of the name "a" then the float32 bytes of 1.0
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_key(empty) == "e3b0c44298fc1c14"
    one = tensors_key({"a": torch.ones(1)})
    assert one == hashlib.sha256(b"a" + torch.ones(1).numpy().tobytes()).hexdigest()[:16]
    assert tensors_key({"a": torch.ones(1)}, torch.float16) != one  # the dtype is part of it
    # by sorted name, whatever the dict's order
    assert tensors_key({"b": torch.zeros(2), "a": torch.ones(1)}) == tensors_key(
        {"a": torch.ones(1), "b": torch.zeros(2)}
    )
