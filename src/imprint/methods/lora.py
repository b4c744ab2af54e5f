"""LoRA (Hu et al. 2021, arXiv 2106.09685) as used for DreamBooth: low-rank updates
W + (alpha / rank) B A on the attention projections of the UNet, and of the text encoder
when asked; with `--lora-targets attention+conv` also on the UNet's ResNet convolutions (as
LyCORIS' LoCon), which reach the resolution levels that have no attention. The layers are
PEFT's; the result is diffusers' own LoRA file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from imprint.methods.base import Method, register
from imprint.util.settings import setting

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclass
class LoRASettings:
    rank: int = setting(4, "LoRA rank", positive=True)
    alpha: float | None = setting(None, "LoRA alpha; the update is scaled by alpha / rank",
                                  shown_default="the rank, as diffusers' example")
    lora_targets: str = setting("attention", "attention: the UNet's attention projections (diffusers' "
                                "example); attention+conv: also its ResNet convolutions (LyCORIS' LoCon)",
                                choices=("attention", "attention+conv"))
    train_text_encoder: bool = setting(False, "also train the text encoder")

    def resolve(self) -> None:
        if self.alpha is None:
            self.alpha = float(self.rank)


@register
class LoRA(Method):
    name = "lora"
    summary = "PEFT LoRA on the denoiser's attention (and the text encoder's); diffusers LoRA file"
    Settings = LoRASettings
    default_lr = 1e-4

    def trained_parts(self) -> set[str]:
        return {"unet", "text_encoder"} if self.settings.train_text_encoder else {"unet"}

    def float32_parts(self) -> set[str]:
        return set()  # the adapters are made float32 in add_trainables(); the base stays low precision

    def adapter_config(self, part: str, family):
        from peft import LoraConfig

        targets = list(family.lora_targets[part])
        if self.settings.lora_targets == "attention+conv":
            targets += family.lora_conv_targets.get(part, [])
        return LoraConfig(r=self.settings.rank, lora_alpha=self.settings.alpha, init_lora_weights="gaussian",
                          target_modules=targets)

    def add_trainables(self, family) -> list[torch.nn.Parameter]:
        params = []
        for part in sorted(self.trained_parts()):
            module = family.modules[part]
            module.add_adapter(self.adapter_config(part, family))
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()  # adapter weights train in float32 under any precision
                    params.append(p)
        return params

    def save_result(self, family, folder: Path) -> list[str]:
        from peft.utils import get_peft_model_state_dict

        layers, configs = {}, {}
        for part in self.trained_parts():
            module = family.modules[part]
            layers[part] = {k: v.detach().float().cpu().contiguous()
                            for k, v in get_peft_model_state_dict(module, save_embedding_layers=False).items()}
            configs[part] = module.peft_config["default"].to_dict()
        family.save_lora(folder, layers, configs)
        return [WEIGHT_NAME]

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        pipe.load_lora_weights(str(folder), weight_name=WEIGHT_NAME)
