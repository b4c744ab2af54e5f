"""DreamBooth (Ruiz et al. 2023, arXiv 2208.12242): fine-tunes every UNet weight (and the
text encoder when asked); the result is diffusers model folders that replace the base parts."""

from __future__ import annotations

from pathlib import Path

import torch

from imprint.methods.base import Method, register


@register
class Full(Method):
    name = "full"

    def trained_parts(self) -> set[str]:
        return {"unet", "text_encoder"} if self.cfg.train_text_encoder else {"unet"}

    def prepare(self, family) -> list[torch.nn.Parameter]:
        params = []
        for part in sorted(self.trained_parts()):
            module = family.modules[part]
            module.requires_grad_(True)
            module.train()
            params.extend(module.parameters())
        return params

    def save_result(self, family, folder: Path) -> list[str]:
        names = []
        for part in sorted(self.trained_parts()):
            family.modules[part].save_pretrained(folder / part, safe_serialization=True)
            names.append(part)
        return names

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        dtype = pipe.unet.dtype
        pipe.unet = UNet2DConditionModel.from_pretrained(
            folder / "unet", torch_dtype=dtype, use_safetensors=True).to(pipe.device)
        if (folder / "text_encoder").is_dir():
            pipe.text_encoder = CLIPTextModel.from_pretrained(
                folder / "text_encoder", torch_dtype=dtype, use_safetensors=True).to(pipe.device)
