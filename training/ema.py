"""Exponential moving averages of weights: the loop's EMA and every method's target network."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Exponential moving average of a module's trainable parameters: the loop's EMA weights
    and every method's target network (``module=True`` keeps the average in a frozen copy of
    the model that can be called)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True, module: bool = False):
        if not 0 < decay < 1:
            raise ValueError(f"an EMA decay must lie in (0, 1), got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        names = [k for k, p in model.named_parameters() if p.requires_grad]
        self.module = copy.deepcopy(model).eval().requires_grad_(False) if module else None
        if self.module is not None:  # the copy's own parameters are the average
            params = dict(self.module.named_parameters())
            self.shadow = {k: params[k].data for k in names}
        else:
            params = dict(model.named_parameters())
            self.shadow = {k: params[k].detach().clone().float() for k in names}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step towards ``model``'s current weights."""
        self.updates += 1
        d = self.decay
        if self.warmup:
            d = min(d, (1 + self.updates) / (10 + self.updates))
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach().to(self.shadow[k].dtype), 1 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the averaged weights into ``model`` (returned)."""
        for k, p in model.named_parameters():
            if k in self.shadow:
                p.copy_(self.shadow[k].to(p.dtype))
        return model

    def model_copy(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` holding the averaged weights."""
        return self.copy_to(copy.deepcopy(model))

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        self.updates = sd["updates"]
        for k, v in sd["shadow"].items():  # in place: a module's copy stays the average
            self.shadow[k].copy_(v)
