"""DreamBooth (Ruiz et al. 2023, arXiv 2208.12242): fine-tunes every UNet weight (and the
text encoder when asked); the result is diffusers model folders that replace the base parts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from imprint.methods.base import Method, pipeline_modules, register
from imprint.util.settings import setting


@dataclass
class FullSettings:
    train_text_encoder: bool = setting(False, "also train the text encoder")


@register
class Full(Method):
    name = "full"
    summary = "every denoiser weight (and the text encoder's); diffusers model folders"
    Settings = FullSettings
    default_lr = 5e-6

    def trained_parts(self) -> set[str]:
        return {"denoiser", "text_encoder"} if self.settings.train_text_encoder else {"denoiser"}

    def add_trainables(self, family) -> list[torch.nn.Parameter]:
        params = []
        for part in family.parts(self.trained_parts()):
            module = family.modules[part]
            module.requires_grad_(True)
            module.train()
            params.extend(module.parameters())
        return params

    def save_result(self, family, folder: Path) -> list[str]:
        names = []
        for part in family.parts(self.trained_parts()):
            family.modules[part].save_pretrained(folder / part, safe_serialization=True)
            names.append(part)
        return names

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        # each part loads with the class the pipeline already holds, whatever the family
        for part, current in pipeline_modules(pipe).items():
            if (folder / part).is_dir():
                loaded = type(current).from_pretrained(folder / part, torch_dtype=current.dtype,
                                                       use_safetensors=True).to(pipe.device)
                setattr(pipe, part, loaded)
