"""The key prefixes of a student's state dict: every split or join of its keys goes through here.

A student's weights are one flat dict: ``lora.*`` (the peft adapter of the network's UNet) or
``net.*`` (the whole network; its UNet under ``net.unet.*``), plus ``s_embed.*`` / ``w_embed.*``
(the zero-initialised embeddings of the second time and the guidance scale).
"""

from __future__ import annotations

from torch import Tensor

PREFIXES = {
    "lora": "lora.",  # peft adapter of the network's UNet -> adapter/adapter_model.safetensors
    "net": "net.",  # the whole network of a full copy
    "unet": "net.unet.",  # the network's UNet -> unet/ (diffusers format)
    "s_embed": "s_embed.",  # second time input -> extra.safetensors
    "w_embed": "w_embed.",  # guidance-scale input -> extra.safetensors
}
EMBEDS = ("s_embed", "w_embed")  # the optional embedding modules, by attribute name


def join(part: str, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """``sd``'s keys under ``part``'s prefix."""
    pre = PREFIXES[part]
    return {pre + k: v for k, v in sd.items()}


def split(part: str, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The entries of ``sd`` under ``part``'s prefix, with the prefix removed."""
    pre = PREFIXES[part]
    return {k[len(pre) :]: v for k, v in sd.items() if k.startswith(pre)}


def within(parts: tuple[str, ...], sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The entries of ``sd`` under any of ``parts``' prefixes, keys unchanged."""
    pres = tuple(PREFIXES[p] for p in parts)
    return {k: v for k, v in sd.items() if k.startswith(pres)}
