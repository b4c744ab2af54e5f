"""Adapter layers of imprint's own, for methods PEFT does not have (DiffuseKronA, TLoRA).

An `AdapterLinear` holds the frozen nn.Linear it replaces and adds the method's update to its
output; while `adapter_enabled` is off it is the base layer exactly, which is how the family's
reference prediction (adapters off) sees the frozen model. Every layer also gives its update as a
dense weight (`merged_weight`), which generate and export use: one formula per layer, tested
against the forward pass (merge(adapter)(x) == forward_with_adapter(x)).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("imprint")


class AdapterLinear(nn.Module):
    imprint_adapter = True  # the family's adapters_disabled() switches layers with this flag

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base_layer = base
        self.adapter_enabled = True

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x)
        return self.adapted_forward(x)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def merged_weight(self) -> torch.Tensor:
        """The dense weight whose plain linear equals the adapted forward (float32)."""
        raise NotImplementedError


def inject(module: nn.Module, targets: list[str], make) -> dict[str, AdapterLinear]:
    """Replace every nn.Linear whose path ends with one of `targets` by make(linear, path)."""
    found = {}
    for path, child in list(module.named_modules()):
        if isinstance(child, nn.Linear) and any(path == t or path.endswith("." + t) for t in targets):
            parent_path, _, name = path.rpartition(".")
            parent = module.get_submodule(parent_path) if parent_path else module
            layer = make(child, path)
            setattr(parent, name, layer)
            found[path] = layer
    if not found:
        raise ValueError(f"no nn.Linear named {', '.join(targets)} in {type(module).__name__}")
    return found


def merge_into(module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Write dense merged weights (module path -> weight) into a plain model's linears in place."""
    for path, weight in weights.items():
        linear = module.get_submodule(path)
        if tuple(linear.weight.shape) != tuple(weight.shape):
            raise ValueError(f"{path}: weight of shape {tuple(weight.shape)} for a layer of "
                             f"{tuple(linear.weight.shape)}")
        with torch.no_grad():
            linear.weight.copy_(weight.to(linear.weight.dtype))


def divisor_near(dimension: int, wanted: int) -> int:
    """`wanted` if it divides `dimension`, else the largest divisor of `dimension` below it."""
    for d in range(min(wanted, dimension), 0, -1):
        if dimension % d == 0:
            return d
    return 1
