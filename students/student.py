"""Students: a teacher's network (a full copy, or frozen with a peft LoRA adapter) plus what a
method needs, saved as a folder that any server or sweep can load.

- A second time input ``s`` (shortcut step size, consistency target time, MeanFlow's r) and a
  guidance-scale input ``w`` (LCM) enter through small embeddings added to the network's time
  embedding; their last layer starts at zero, so an untrained student equals its teacher.
- The consistency boundary condition is a wrapper (Song et al. 2023; LCM's constants):
  f(x, t) = c_skip(t) x + c_out(t) x0_net(x, t), c_skip(0) = 1, c_out(0) = 0.

Student folder: ``student.json`` (method, teacher id and weight hash, path, parametrization,
sampler, supported step counts, training config, metrics) and the weights: ``unet/``
(diffusers format, full copies) or ``adapter/`` (peft LoRA), ``extra.safetensors`` (the
embeddings), and ``stages/<steps>/`` for methods that train one set of weights per step count.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from samplers.paths import check_prediction, convert, get_path, to_x0_eps
from teachers.base import MultiViewTeacher, file_hash

# Below this time a network output is converted to another parametrization as if at NET_T_MIN:
# an x0 network's velocity is (x_t - x0) / t on the linear path, unbounded as t -> 0.
NET_T_MIN = 0.05

LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
    "conv",
    "conv_in",
    "conv_out",
]


@dataclass
class StudentConfig:
    """How a student is built from its teacher."""

    lora_rank: int = 0  # 0 = full copy of the teacher; N = frozen teacher + LoRA of rank N
    lora_alpha: float = 0.0  # LoRA scale numerator; 0 = the rank (scale 1)
    second_time: bool = False  # add the zero-initialised second time input s
    guidance_input: bool = False  # add the zero-initialised guidance-scale input w
    boundary: bool = False  # consistency preconditioning (the student predicts x0)
    sigma_data: float = 0.5  # consistency c_skip/c_out constant (LCM)
    timestep_scaling: float = 10.0  # consistency: t is scaled by 1000 * this inside c_skip/c_out


def sinusoidal(x: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal features [B, dim] of a scalar per sample."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
    ang = (x.float() * scale)[:, None] * freqs[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)


class ZeroEmbed(nn.Module):
    """Scalar -> embedding MLP whose output layer starts at zero (no effect until trained)."""

    def __init__(self, dim: int, feat: int = 64, scale: float = 1000.0):
        super().__init__()
        self.feat, self.scale = feat, scale
        self.net = nn.Sequential(nn.Linear(feat, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(sinusoidal(x, self.feat, self.scale).to(self.net[0].weight.dtype))


class Student(nn.Module):
    """``student(x_t, t, cond, s=None, w=None)`` -> prediction in ``self.prediction``."""

    def __init__(
        self,
        teacher: MultiViewTeacher,
        cfg: StudentConfig,
        path: str | None = None,
        prediction: str | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.net = copy.deepcopy(teacher).requires_grad_(True)
        self.teacher_info = teacher.info
        self.teacher_weights = teacher.weights_key()
        self.net_prediction = teacher.prediction  # what the network itself outputs
        self._path = path or teacher.path_name
        self._prediction = check_prediction(prediction or teacher.prediction)
        if cfg.boundary:
            self._prediction = "x0"
        dim = teacher.time_embed_dim
        self.s_embed = ZeroEmbed(dim) if cfg.second_time else None
        self.w_embed = ZeroEmbed(dim, scale=100.0) if cfg.guidance_input else None
        if cfg.lora_rank > 0:
            self._add_lora()

    def _add_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        self.net.requires_grad_(False)
        unet = self.net.unet
        lcfg = LoraConfig(
            r=self.cfg.lora_rank,
            lora_alpha=self.cfg.lora_alpha or self.cfg.lora_rank,
            target_modules=LORA_TARGETS,
            init_lora_weights=True,
        )
        inject_adapter_in_model(lcfg, unet)
        self.lora_config = lcfg

    # --- what samplers need -----------------------------------------------------------------
    @property
    def path_name(self) -> str:
        return self._path

    @property
    def prediction(self) -> str:
        return self._prediction

    @property
    def info(self):
        return self.teacher_info

    @property
    def start_time(self) -> float:
        """The teacher's start time on the teacher's own path; 1 on any other path."""
        return float(self.net.start_time) if self._path == self.net.path_name else 1.0

    def noise_shape(self) -> tuple[int, ...]:
        return self.net.noise_shape()

    def decode(self, x: Tensor) -> Tensor:
        return self.net.decode(x)

    # --- the call -----------------------------------------------------------------------------
    def c_skip_out(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Consistency boundary coefficients; c_skip(0) = 1 and c_out(0) = 0 exactly."""
        sd = self.cfg.sigma_data
        ts = t * 1000.0 * self.cfg.timestep_scaling
        return sd**2 / (ts**2 + sd**2), ts / torch.sqrt(ts**2 + sd**2)

    def forward(
        self, x_t: Tensor, t: Tensor, cond: Tensor, s: Tensor | None = None, w: Tensor | None = None
    ) -> Tensor:
        emb = None
        if self.s_embed is not None:
            if s is None:
                raise ValueError("this student takes a second time input s (e.g. a step size)")
            emb = self.s_embed(s)
        if self.w_embed is not None:
            if w is None:
                raise ValueError("this student takes a guidance-scale input w")
            e = self.w_embed(w)
            emb = e if emb is None else emb + e
        out = self.net(x_t, t, cond, emb=emb)
        path = get_path(self.net.path_name)
        if not self.cfg.boundary:
            if self._prediction == self.net_prediction or self._path != self.net.path_name:
                return out  # (on another path the network learns the new output from scratch)
            tc = t.clamp(min=NET_T_MIN)  # e.g. a velocity student of an x0 teacher
            return convert(path, out, x_t, tc, self.net_prediction, self._prediction)
        x0, _ = to_x0_eps(path, out, x_t, t, self.net_prediction)
        c_skip, c_out = self.c_skip_out(t.reshape(-1, *([1] * (x_t.ndim - 1))))
        return c_skip * x_t + c_out * x0

    # --- weights --------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, Tensor]:
        """The weights that make this student: the adapter (LoRA) or the whole network."""
        if self.cfg.lora_rank > 0:
            from peft import get_peft_model_state_dict

            sd = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.net.unet).items()}
        else:
            sd = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        for name in ("s_embed", "w_embed"):
            mod = getattr(self, name)
            if mod is not None:
                sd.update({f"{name}.{k}": v for k, v in mod.state_dict().items()})
        return sd

    def load_trainable_state(self, sd: dict[str, Tensor]) -> None:
        if self.cfg.lora_rank > 0:
            from peft import set_peft_model_state_dict

            lora = {k[5:]: v for k, v in sd.items() if k.startswith("lora.")}
            res = set_peft_model_state_dict(self.net.unet, lora)
            bad = [k for k in getattr(res, "unexpected_keys", []) if "lora" in k]
            if bad or not lora:
                raise ValueError(f"adapter weights do not fit this teacher ({bad[:3] or 'empty'})")
        else:
            net = {k[4:]: v.float() for k, v in sd.items() if k.startswith("net.")}
            self.net.load_state_dict(net)
        for name in ("s_embed", "w_embed"):
            mod = getattr(self, name)
            if mod is not None:
                mod.load_state_dict(
                    {
                        k[len(name) + 1 :]: v.float()
                        for k, v in sd.items()
                        if k.startswith(name + ".")
                    }
                )

    def weights_id(self) -> str:
        return weights_hash_of(self.trainable_state())


def weights_hash_of(sd: dict[str, Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().to(torch.float16).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class StudentCard:
    """What ``student.json`` records."""

    method: str
    teacher_dir: str
    teacher_weights: str
    teacher_kind: str
    path: str
    prediction: str
    sampler: str
    steps: list[int]
    student: dict = field(default_factory=dict)  # StudentConfig
    guidance_scale: float = 1.0  # w fed to guidance-conditioned students (else CFG scale)
    stages: dict = field(default_factory=dict)  # steps -> stage folder with its own weights
    weights: str = ""  # hash of this student's weights
    train_config: dict = field(default_factory=dict)
    train_cost: dict = field(default_factory=dict)  # measured: wall_s, prepare_s, teacher_nfe, ...
    method_info: dict = field(default_factory=dict)  # method facts (progressive: updates/round)
    metrics: dict = field(default_factory=dict)
    created: str = ""


def save_student(
    student: Student,
    folder: str | Path,
    card: StudentCard,
    stages: dict[int, dict[str, Tensor]] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write the student folder; ``stages`` maps extra step counts to their own weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_weights(student, student.trainable_state(), folder, dtype)
    card.stages = {}
    for steps, sd in (stages or {}).items():
        sub = folder / "stages" / str(steps)
        _write_weights(student, sd, sub, dtype)
        card.stages[str(steps)] = f"stages/{steps}"
    card.weights = weights_hash_of(student.trainable_state())
    card.student = asdict(student.cfg)
    card.created = card.created or time.strftime("%Y-%m-%dT%H:%M:%S")
    (folder / "student.json").write_text(json.dumps(asdict(card), indent=2))
    return folder


def _write_weights(student: Student, sd: dict[str, Tensor], folder: Path, dtype) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(dtype).contiguous().cpu() for k, v in sd.items()}
    if student.cfg.lora_rank > 0:
        adir = folder / "adapter"
        adir.mkdir(exist_ok=True)
        save_file(
            {k[5:]: v for k, v in sd.items() if k.startswith("lora.")},
            adir / "adapter_model.safetensors",
        )
        lc = student.lora_config.to_dict()
        lc["target_modules"] = sorted(lc["target_modules"])
        (adir / "adapter_config.json").write_text(json.dumps(lc, indent=2, default=str))
    else:
        unet_sd = {k[len("net.unet.") :]: v for k, v in sd.items() if k.startswith("net.unet.")}
        net = copy.deepcopy(student.net.unet).to(dtype)
        net.load_state_dict(unet_sd)
        net.save_pretrained(folder / "unet", safe_serialization=True)
    extra = {k: v for k, v in sd.items() if k.startswith(("s_embed.", "w_embed."))}
    if extra:
        save_file(extra, folder / "extra.safetensors")


def _read_weights(student: Student, folder: Path) -> dict[str, Tensor]:
    sd: dict[str, Tensor] = {}
    try:
        if student.cfg.lora_rank > 0:
            f = folder / "adapter" / "adapter_model.safetensors"
            sd.update({f"lora.{k}": v for k, v in load_file(f).items()})
        else:
            f = folder / "unet" / "diffusion_pytorch_model.safetensors"
            sd.update({f"net.unet.{k}": v for k, v in load_file(f).items()})
        if (folder / "extra.safetensors").exists():
            f = folder / "extra.safetensors"
            sd.update(load_file(f))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"student weights missing: {e}") from e
    except Exception as e:
        raise ValueError(f"{f}: corrupt or unreadable weights file ({e})") from e
    return sd


def read_card(folder: str | Path) -> StudentCard:
    path = Path(folder) / "student.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a student folder")
    try:
        return StudentCard(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}: not a valid student card ({e})") from e


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

    def use_steps(self, steps: int) -> None:
        if steps not in self.card.steps:
            raise ValueError(
                f"student {self.folder} ({self.card.method}) does not support {steps} steps; "
                f"supported: {self.card.steps}"
            )
        stage = self.card.stages.get(str(steps))
        if stage != self._stage:
            where = self.folder / stage if stage else self.folder
            self.student.load_trainable_state(_read_weights(self.student, where))
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

    def weights_key(self) -> str:
        """Hash of every weights file of the folder (per-step stages included)."""
        h = hashlib.sha256()
        for f in sorted(self.folder.rglob("*.safetensors")):
            h.update(f"{f.relative_to(self.folder)}:{file_hash(f)}".encode())
        return h.hexdigest()[:16]

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


def merged_copy(student: Student) -> Student:
    """A private copy of a LoRA student with every adapter folded into its base layer and the
    LoRA wrappers removed (the network of the teacher's shape and cost); the original keeps its
    adapters. A student without LoRA is returned as a plain copy."""
    from peft.tuners.lora import LoraLayer

    m = copy.deepcopy(student)
    for name, mod in list(m.net.named_modules()):
        if isinstance(mod, LoraLayer):
            mod.merge()
            parent_name, _, child = name.rpartition(".")
            parent = m.net.get_submodule(parent_name) if parent_name else m.net
            setattr(parent, child, mod.get_base_layer())
    m.lora_config = None
    return m.requires_grad_(False).eval()


def load_student(
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
    st.load_trainable_state(_read_weights(st, folder))
    return LoadedStudent(st, card, folder, merge=merge).eval()
