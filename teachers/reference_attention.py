"""Reference attention as diffusers attention processors (Zero123++'s "reference-only" attention).

One denoiser call runs the UNet twice at the same timestep:
  1. the reference pass: the condition latent (noised to the same time) runs through the UNet,
     and every self-attention layer (``attn1``) records its input hidden states;
  2. the main pass: every self-attention layer appends the recorded states to its own as extra
     keys and values (queries stay the main pass's own), so the views attend to the condition.
With the bank off, the processors pass straight through: the UNet is the plain UNet.

Facts read from SUDO-AI-3D/zero123plus, diffusers-support/pipeline.py (ReferenceOnlyAttnProc,
RefOnlyNoisedUNet): only processors whose name ends in ``attn1.processor`` take part; the
recorded tensor is the attention's input (after the block's norm1); the main pass concatenates
[own, reference] along the token axis. Written here as a shared module: the lab teacher v3
(teachers/lab.py) uses the same processors on a diffusers UNet2DModel, whose attention blocks are
all self-attention and take the feature map [B, C, H, W] with the group norm inside the
attention: there the recorded and appended tokens are the normed, flattened map [B, H*W, C]
(what the keys are computed from), so both UNet kinds append the same thing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

SELF_ATTENTION_SUFFIX = "attn1.processor"  # diffusers' name of a transformer block's self-attn


class ReferenceBank:
    """Where the reference pass leaves each self-attention's input for the main pass.

    ``mode``: "off" (plain attention), "write" (record), "read" (append the record)."""

    def __init__(self) -> None:
        self.mode = "off"
        self.states: dict[str, Tensor] = {}

    def __deepcopy__(self, memo):  # a copy (a student's network) starts with an empty bank
        return ReferenceBank()


class ReferenceAttnProcessor:
    """Wraps a self-attention processor: records (write) or appends (read) reference states."""

    def __init__(self, name: str, bank: ReferenceBank, inner: Callable) -> None:
        self.name, self.bank, self.inner = name, bank, inner

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
    ) -> Tensor:
        mode = self.bank.mode
        if mode == "write":
            self.bank.states[self.name] = _tokens(attn, hidden_states, encoder_hidden_states)
        elif mode == "read":
            own = _tokens(attn, hidden_states, encoder_hidden_states)
            ref = self.bank.states.get(self.name)
            if ref is None:
                raise RuntimeError(f"{self.name}: no reference recorded (run the reference pass)")
            encoder_hidden_states = torch.cat([own, ref.to(own.dtype)], dim=1)
        elif mode != "off":
            raise ValueError(f"reference bank mode {mode!r}; valid: off, write, read")
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _tokens(attn: nn.Module, hidden: Tensor, encoder: Tensor | None) -> Tensor:
    """What the attention's keys and values are computed from, as tokens [B, L, C]: the input of
    a transformer block's attn1 (already normed by the block), or an attention block's feature
    map [B, C, H, W] flattened and put through its own group norm (UNet2DModel)."""
    x = hidden if encoder is None else encoder
    if x.ndim == 4:
        x = x.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    return x


def self_attentions(unet: nn.Module) -> dict[str, nn.Module]:
    """The self-attention layers of a diffusers UNet by processor name: a transformer block's
    ``attn1`` (UNet2DConditionModel), or every attention block of a UNet2DModel (all of them
    are self-attention there)."""
    found = {
        f"{n}.processor": m
        for n, m in unet.named_modules()
        if isinstance(m, Attention) and not m.is_cross_attention
    }
    if any(n.endswith(SELF_ATTENTION_SUFFIX) for n in found):  # transformer blocks: attn1 only
        found = {n: m for n, m in found.items() if n.endswith(SELF_ATTENTION_SUFFIX)}
    return found


def install_reference_attention(unet: nn.Module) -> ReferenceBank:
    """Wrap every self-attention processor of ``unet`` (kept as the inner processor); returns
    the bank that switches them. Raises if the UNet has no self-attention to append to."""
    layers = self_attentions(unet)
    if not layers:
        raise ValueError(
            "the UNet has no self-attention layers: reference attention has nowhere to enter "
            "(it needs transformer blocks, e.g. CrossAttnDownBlock2D, or attention blocks, "
            "e.g. AttnDownBlock2D)"
        )
    bank = ReferenceBank()
    for n, m in layers.items():
        if isinstance(m.processor, ReferenceAttnProcessor):
            raise ValueError(f"{n}: reference attention is already installed")
    for n, m in layers.items():
        m.set_processor(ReferenceAttnProcessor(n, bank, m.processor))
    return bank


def reference_bank(unet: nn.Module) -> ReferenceBank:
    """The bank the processors of ``unet`` share (after install_reference_attention, or in a
    deep copy of it)."""
    for m in unet.modules():
        if isinstance(getattr(m, "processor", None), ReferenceAttnProcessor):
            return m.processor.bank
    raise ValueError("reference attention is not installed on this UNet")


def reference_forward(
    unet: nn.Module,
    sample: Tensor,
    timestep: Tensor,
    reference: Tensor,
    reference_time: Tensor | None = None,
    **kw,
) -> Tensor:
    """The UNet's output on ``sample`` with reference attention to ``reference``, both passes
    with the same keyword inputs; the reference pass at ``reference_time`` (default
    ``timestep``: Zero123++ noises the reference latent to the sample's level)."""
    bank = reference_bank(unet)
    try:
        bank.mode = "write"  # 1. the reference pass records every self-attention's input
        unet(reference, timestep if reference_time is None else reference_time, **kw)
        bank.mode = "read"  # 2. the main pass appends it as extra keys/values
        return unet(sample, timestep, **kw).sample
    finally:
        bank.mode = "off"
        bank.states.clear()
