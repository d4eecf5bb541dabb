"""The old names of the student modules.

temporary: removed when eval/, serve/ and distill/ import the new modules (students.module,
students.card, students.folder, students.lora).
"""

from students.card import StudentCard, read_card
from students.folder import LoadedStudent
from students.lora import LORA_TARGETS, merged_copy
from students.module import (
    NET_T_MIN,
    Student,
    StudentConfig,
    ZeroEmbed,
    sinusoidal,
)

load_student = LoadedStudent.from_pretrained
save_student = Student.save_pretrained


__all__ = [
    "LORA_TARGETS",
    "NET_T_MIN",
    "LoadedStudent",
    "Student",
    "StudentCard",
    "StudentConfig",
    "ZeroEmbed",
    "load_student",
    "merged_copy",
    "read_card",
    "save_student",
    "sinusoidal",
]
