"""Adapter layers of imprint's own, for methods PEFT does not have (DiffuseKronA, TLoRA).

An `AdapterLinear` holds the frozen nn.Linear it replaces and adds the method's update to its
output; while `adapter_enabled` is off it is the base layer exactly, which is how the family's
reference prediction (adapters off) sees the frozen model. Every layer also gives its update as a
dense weight (`merged_weight`), which generate and export use: one formula per layer, tested
against the forward pass (merge(adapter)(x) == forward_with_adapter(x)).
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from imprint.methods.base import Method, pipeline_denoiser
from imprint.util.errors import ImprintError

log = logging.getLogger("imprint")


class AdapterLinear(nn.Module, ABC):
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

    @abstractmethod
    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def merged_weight(self) -> torch.Tensor:
        """The dense weight whose plain linear equals the adapted forward (float32)."""


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


class LayerAdapterMethod(Method):
    adapters_off_is_base = True
    """A method that trains imprint's own adapter layers on the UNet's attention projections.

    The result file holds each layer's parameters (`unet.<module path>.<parameter>`); loading it
    rebuilds the same layers around the pipeline's linears and writes their `merged_weight` into
    them, so generation uses the one formula training used."""

    WEIGHT_NAME = "adapter_weights.safetensors"

    @abstractmethod
    def make_layer(self, linear: nn.Linear, path: str) -> AdapterLinear:
        """The method's layer around one frozen linear (`path`: its place in the UNet)."""

    def trained_parts(self) -> set[str]:
        return {"denoiser"}

    def float32_parts(self) -> set[str]:
        return set()  # the adapter parameters are float32; the frozen base takes the compute dtype

    def add_trainables(self, family) -> list[torch.nn.Parameter]:
        denoiser = family.denoiser
        denoiser.requires_grad_(False)
        self.layers = inject(denoiser, family.lora_targets[family.denoiser_name],
                             lambda linear, path: self.make_layer(linear, path).to(linear.weight.device))
        return [p for layer in self.layers.values() for p in layer.parameters() if p.requires_grad]

    def save_result(self, family, folder: Path) -> list[str]:
        tensors = {f"{family.denoiser_name}.{path}.{name}": p.detach().float().cpu().contiguous()
                   for path, layer in self.layers.items() for name, p in layer.named_parameters() if p.requires_grad}
        save_file(tensors, str(Path(folder) / self.WEIGHT_NAME), metadata={"format": "pt", "imprint_method": self.name})
        return [self.WEIGHT_NAME]

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        path = Path(folder) / cls.WEIGHT_NAME
        try:
            tensors = load_file(str(path))
        except (OSError, ValueError) as e:
            raise ImprintError(f"{path}: unreadable ({e}); the run folder is damaged") from e
        names = {f.name for f in dataclasses.fields(cls.Settings)}
        hp = metadata.get("hyperparameters") or {}
        method = cls(cls.Settings(**{k: v for k, v in hp.items() if k in names}))
        # "<denoiser>.<linear's path>.<parameter name>": the longest prefix that names a linear is the module
        denoiser = pipeline_denoiser(pipe)
        prefix = "unet." if denoiser is getattr(pipe, "unet", None) else "transformer."
        linears = {n for n, m in denoiser.named_modules() if isinstance(m, nn.Linear)}
        states: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            parts = key.split(".")[1:]
            cut = next((i for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in linears), None)
            if not key.startswith(prefix) or cut is None:
                raise ImprintError(f"{path}: key {key!r} names no linear layer of the base model's denoiser; "
                                   "is this run of another base model?")
            states.setdefault(".".join(parts[:cut]), {})[".".join(parts[cut:])] = value
        try:
            layers = inject(denoiser, sorted(states), method.make_layer)
            merged = {}
            for module, layer in layers.items():
                missing = layer.load_state_dict(states[module], strict=False).missing_keys
                if any(not k.startswith("base_layer.") for k in missing):
                    raise KeyError(f"{module} lacks {missing[0]}")
                merged[module] = layer.merged_weight().detach()
                parent, _, name = module.rpartition(".")
                setattr(denoiser.get_submodule(parent) if parent else denoiser, name, layer.base_layer)
            merge_into(denoiser, merged)
        except (ValueError, KeyError, AttributeError, RuntimeError) as e:
            raise ImprintError(f"{path}: {e}; is this run of another base model, or with other settings?") from e
