"""DoRA (Liu et al. 2024, arXiv 2402.09353): the weight split into a per-output-row magnitude m
and a direction; LoRA updates the direction, m is trained too: W' = m (W + s B A) / ||W + s B A||.
PEFT's layer (`use_dora`), which detaches the norm as the paper's section 4.3 advises. The result
is diffusers' LoRA file (its `lora_magnitude_vector` keys make `load_lora_weights` build DoRA)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from imprint.methods.base import register
from imprint.methods.lora import WEIGHT_NAME, LoRA


@register
class DoRA(LoRA):
    name = "dora"
    summary = "PEFT DoRA (LoRA + a trained per-row magnitude); diffusers LoRA file"
    use_dora = True

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        super().load_into_pipeline(pipe, folder, metadata)
        # diffusers loads the text encoder's DoRA magnitudes under a name transformers' PEFT
        # integration does not match (`...lora_magnitude_vector.<adapter>` vs `....weight`), so they
        # stay at their initial ||W||; set them from the file (the UNet's load correctly)
        tensors = load_file(str(Path(folder) / WEIGHT_NAME))
        suffix = ".lora_magnitude_vector"
        with torch.no_grad():
            for key, value in tensors.items():
                part, _, path = key.partition(".")
                if part.startswith("text_encoder") and key.endswith(suffix):  # SDXL: text_encoder_2 too
                    layer = getattr(pipe, part).get_submodule(path[:-len(suffix)])
                    for magnitude in layer.lora_magnitude_vector.values():
                        magnitude.weight.copy_(value.to(magnitude.weight.dtype))
