"""A student folder: save and load, and the loaded student that samples.

Student folder: ``student.json`` (method, teacher id and weight hash, path, parametrization,
sampler, supported step counts, training config, metrics) and the weights: ``unet/``
(diffusers format, full copies) or ``adapter/`` (peft LoRA), ``extra.safetensors`` (the
embeddings), and ``stages/<steps>/`` for methods that train one set of weights per step count.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from samplers.protocol import folder_key, tensors_key
from students import keys
from students.card import StudentCard, read_card, write_card
from students.lora import adapter_config_json, merged_copy
from students.module import Student, StudentConfig
from teachers.base import MultiViewTeacher

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
UNET_DIR = "unet"
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"  # what diffusers' save_pretrained writes
EXTRA_WEIGHTS = "extra.safetensors"
STAGES_DIR = "stages"


def save_folder(
    student: Student,
    folder: str | Path,
    card: StudentCard,
    stages: dict[int, dict[str, Tensor]] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write the student folder; ``stages`` maps extra step counts to their own weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(student, student.trainable_state(), folder, dtype)
    card.stages = {}
    for steps, sd in (stages or {}).items():
        sub = folder / STAGES_DIR / str(steps)
        write_weights(student, sd, sub, dtype)
        card.stages[str(steps)] = f"{STAGES_DIR}/{steps}"
    card.weights = tensors_key(student.trainable_state(), torch.float16)
    card.student = asdict(student.cfg)
    card.created = card.created or time.strftime("%Y-%m-%dT%H:%M:%S")
    write_card(folder, card)
    return folder


def write_weights(student: Student, sd: dict[str, Tensor], folder: Path, dtype) -> None:
    """Write one set of ``student``'s weights (``trainable_state``'s keys) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(dtype).contiguous().cpu() for k, v in sd.items()}
    if student.cfg.lora_rank > 0:
        adir = folder / ADAPTER_DIR
        adir.mkdir(exist_ok=True)
        save_file(keys.split("lora", sd), adir / ADAPTER_WEIGHTS)
        (adir / ADAPTER_CONFIG).write_text(adapter_config_json(student.lora_config))
    else:
        net = copy.deepcopy(student.net.unet).to(dtype)
        net.load_state_dict(keys.split("unet", sd))
        net.save_pretrained(folder / UNET_DIR, safe_serialization=True)
    extra = keys.within(keys.EMBEDS, sd)
    if extra:
        save_file(extra, folder / EXTRA_WEIGHTS)


def read_weights(student: Student, folder: Path) -> dict[str, Tensor]:
    """One set of weights from ``folder``, by ``trainable_state``'s keys."""
    sd: dict[str, Tensor] = {}
    try:
        if student.cfg.lora_rank > 0:
            f = folder / ADAPTER_DIR / ADAPTER_WEIGHTS
            sd.update(keys.join("lora", load_file(f)))
        else:
            f = folder / UNET_DIR / UNET_WEIGHTS
            sd.update(keys.join("unet", load_file(f)))
        if (folder / EXTRA_WEIGHTS).exists():
            f = folder / EXTRA_WEIGHTS
            sd.update(load_file(f))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"student weights missing: {e}") from e
    except Exception as e:
        raise ValueError(f"{f}: corrupt or unreadable weights file ({e})") from e
    return sd


class LoadedStudent(nn.Module):
    """A student folder ready to sample: picks the weights trained for the asked step count."""

    def __init__(self, student: Student, card: StudentCard, folder: Path, merge: bool = False):
        super().__init__()
        self.student, self.card, self.folder = student, card, folder
        self._stage = None
        # merge=True: sample with a private copy whose LoRA is folded into the base weights (one
        # per stage, built on first use), so a call costs what the teacher's call costs
        self.merge = merge and getattr(student, "lora_config", None) is not None
        self.merged = nn.ModuleDict()  # stage -> merged copy (moves with .to())

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        teacher: MultiViewTeacher | None = None,
        teacher_dir: str | Path | None = None,
        merge: bool = False,
    ) -> LoadedStudent:
        """Load a student folder against its teacher (``teacher`` or its folder, else the one the
        card names). A teacher with other weights than the student was made from is an error.
        ``merge``: sample with LoRA folded into a private copy of the weights (inference)."""
        from teachers.io import load_teacher

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"student folder {folder} does not exist")
        card = read_card(folder)
        if teacher is None:
            tdir = Path(teacher_dir or card.teacher_dir)
            if not tdir.exists() and not tdir.is_absolute():
                tdir = (folder / tdir) if (folder / tdir).exists() else tdir
            teacher = load_teacher(tdir)
        tw = teacher.weights_key()
        if tw != card.teacher_weights:
            raise ValueError(
                f"student {folder} was made from teacher weights {card.teacher_weights} "
                f"({card.teacher_dir}), but the given teacher has weights {tw}"
            )
        cfg = StudentConfig(**card.student)
        st = Student(teacher, cfg, path=card.path, prediction=card.prediction)
        st.teacher_weights = card.teacher_weights
        st.load_trainable_state(read_weights(st, folder))
        return cls(st, card, folder, merge=merge).eval()

    def use_steps(self, steps: int) -> None:
        if steps not in self.card.steps:
            raise ValueError(
                f"student {self.folder} ({self.card.method}) does not support {steps} steps; "
                f"supported: {self.card.steps}"
            )
        stage = self.card.stages.get(str(steps))
        if stage != self._stage:
            where = self.folder / stage if stage else self.folder
            self.student.load_trainable_state(read_weights(self.student, where))
            self._stage = stage
            key = stage or "main"
            if self.merge and key not in self.merged:
                self.merged[key] = merged_copy(self.student)

    def runner(self) -> nn.Module:
        """The module that computes the output: the merged copy of the current stage or the
        student itself."""
        if self.merge:
            if self._stage is None and "main" not in self.merged:
                self.merged["main"] = merged_copy(self.student)
            return self.merged[self._stage or "main"]
        return self.student

    # sampleable interface (delegates)
    path_name = property(lambda self: self.student.path_name)
    prediction = property(lambda self: self.student.prediction)
    info = property(lambda self: self.student.info)
    start_time = property(lambda self: self.student.start_time)

    def noise_shape(self):
        return self.student.noise_shape()

    def decode(self, x):
        return self.student.decode(x)

    def forward(self, *args, **kw):
        return self.runner()(*args, **kw)

    # the sampleable interface (shared with teachers)
    method = property(lambda self: self.card.method)
    supported_steps = property(lambda self: list(self.card.steps))
    own_sampler = property(lambda self: self.card.sampler)

    def sampling_times(self, steps: int, shift: float = 1.0) -> Tensor:
        """The lab times its card records for ``steps`` (sCM's angles), else the uniform grid
        from ``start_time`` that ``generate`` builds for any model."""
        from samplers.sampling import time_grid

        own = self.card.method_info.get("sampling_times", {}).get(str(steps))
        if own is not None:
            return torch.tensor(own, dtype=torch.float32)
        return time_grid(steps, shift, float(self.start_time))

    def weights_key(self) -> str:
        """Hash of every weights file of the folder (per-step stages included)."""
        return folder_key(self.folder)

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        steps: int,
        seeds: list[int],
        sampler: str | None = None,
        guidance: float | None = None,
        decode: bool = True,
    ):
        """Views [B, V, 3, H, W] with this student's own sampler at ``steps`` (``sampler`` and
        ``guidance`` are the teacher's settings and ignored); and the NFE."""
        from samplers.sampling import generate

        self.use_steps(steps)
        kw = None
        if self.student.w_embed is not None:
            kw = {"w": torch.full((cond.shape[0],), float(self.card.guidance_scale))}
        return generate(
            self, cond, steps, seeds, self.card.sampler, 1.0, model_kwargs=kw, decode=decode
        )
