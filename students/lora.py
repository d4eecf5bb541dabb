"""The peft specifics of a LoRA student: which layers get adapters, the adapter's weights and
config, and the merged copy that samples at the teacher's cost."""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from peft import LoraConfig

    from students.module import Student

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


def add_lora(unet: nn.Module, rank: int, alpha: float) -> LoraConfig:
    """Inject LoRA adapters of ``rank`` (scale ``alpha / rank``; alpha 0 = the rank) into
    ``unet`` in place; the config used."""
    from peft import LoraConfig, inject_adapter_in_model

    lcfg = LoraConfig(
        r=rank,
        lora_alpha=alpha or rank,
        target_modules=LORA_TARGETS,
        init_lora_weights=True,
    )
    inject_adapter_in_model(lcfg, unet)
    return lcfg


def adapter_state(unet: nn.Module) -> dict[str, Tensor]:
    """The adapter's weights, by peft's key names."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(unet)


def load_adapter_state(unet: nn.Module, sd: dict[str, Tensor]) -> None:
    """Set the adapter's weights; weights of other adapter layers (or none) are an error."""
    from peft import set_peft_model_state_dict

    res = set_peft_model_state_dict(unet, sd)
    bad = [k for k in getattr(res, "unexpected_keys", []) if "lora" in k]
    if bad or not sd:
        raise ValueError(f"adapter weights do not fit this teacher ({bad[:3] or 'empty'})")


def adapter_config_json(lcfg: LoraConfig) -> str:
    """``adapter_config.json``'s text (target modules sorted, so it does not vary by run)."""
    lc = lcfg.to_dict()
    lc["target_modules"] = sorted(lc["target_modules"])
    return json.dumps(lc, indent=2, default=str)


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
