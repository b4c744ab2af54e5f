"""What every adapter method shares: the settings of its size and its targets, the parts it
trains, float32 adapter weights over a frozen base, and the files of PEFT adapter types.

An adapter method (lora, dora, loha, lokr, ...) says only which PEFT config it builds
(`peft_config`) and, where diffusers has a file format for it, how it saves; everything else is
here, so the methods differ in their maths and files, not in how they are wired in.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from imprint.methods.base import Method, pipeline_modules
from imprint.util.settings import setting

ADAPTER_FOLDER = "adapter"  # PEFT layout: adapter/<part>/{adapter_config.json, adapter_model.safetensors}


@dataclass
class AdapterSettings:
    rank: int = setting(4, "adapter rank (LoRA / DoRA: of B A; LoHa: of each Hadamard factor; LoKr: of "
                        "the larger Kronecker factor, which is kept full when the rank is at least half "
                        "its size)", positive=True)
    alpha: float | None = setting(None, "adapter alpha; the update is scaled by alpha / rank",
                                  shown_default="the rank, as diffusers' example")
    lora_targets: str = setting("attention", "attention: the UNet's attention projections (diffusers' "
                                "example); attention+conv: also its ResNet convolutions (LyCORIS' LoCon)",
                                choices=("attention", "attention+conv"))
    train_text_encoder: bool = setting(False, "also train the text encoder")

    def resolve(self) -> None:
        if self.alpha is None:
            self.alpha = float(self.rank)


class AdapterMethod(Method):
    adapters_off_is_base = True
    """Adapters on the denoiser's attention (and the text encoder's when asked); the base frozen."""

    Settings = AdapterSettings

    def trained_parts(self) -> set[str]:
        return self.adapter_parts()

    def adapter_parts(self) -> set[str]:
        """The roles of the parts that carry adapters."""
        return {"denoiser", "text_encoder"} if self.settings.train_text_encoder else {"denoiser"}

    def float32_parts(self) -> set[str]:
        return set()  # the adapters are made float32 in add_trainables(); the base stays low precision

    def target_modules(self, part: str, family) -> list[str]:
        targets = list(family.lora_targets[part])
        if self.settings.lora_targets == "attention+conv":
            targets += family.lora_conv_targets.get(part, [])
        return targets

    @abstractmethod
    def peft_config(self, part: str, family):
        """The PEFT config of the adapter on `part`."""

    def add_trainables(self, family) -> list[torch.nn.Parameter]:
        params = []
        for part in family.parts(self.adapter_parts()):
            module = family.modules[part]
            module.add_adapter(self.peft_config(part, family))
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()  # adapter weights train in float32 under any precision
                    params.append(p)
        return params

    # PEFT's own layout, for adapter types diffusers has no file format of
    def save_result(self, family, folder: Path) -> list[str]:
        from imprint.methods.peft_io import save_adapters

        parts = save_adapters({p: family.modules[p] for p in family.parts(self.adapter_parts())},
                              Path(folder) / ADAPTER_FOLDER)
        return [f"{ADAPTER_FOLDER}/{part}" for part in parts]

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        from imprint.methods.peft_io import load_adapters

        load_adapters(pipeline_modules(pipe), Path(folder) / ADAPTER_FOLDER)
