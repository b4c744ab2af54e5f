"""Full fine-tuning of a language model: every weight trains (embeddings and lm_head included);
the result is a transformers model folder with the tokenizer, loadable on its own."""

from __future__ import annotations

from pathlib import Path

import torch

from imprint.methods.base import register
from imprint.methods.lm_base import LMMethod

MODEL_FOLDER = "model"


@register
class LMFull(LMMethod):
    name = "full"
    summary = "every weight; a transformers model folder"
    default_lr = 1e-5
    trains_base_weights = True

    def prepare(self, lm, seed: int) -> list[torch.nn.Parameter]:
        lm.model.requires_grad_(True)
        return [p for p in lm.model.parameters()]

    def save_result(self, lm, folder: Path) -> list[str]:
        target = Path(folder) / MODEL_FOLDER
        lm.model.save_pretrained(str(target), safe_serialization=True)
        lm.tokenizer.save_pretrained(str(target))
        return [MODEL_FOLDER]

    @classmethod
    def apply_result(cls, lm, folder: Path, metadata: dict) -> None:
        from transformers import AutoModelForCausalLM

        source = cls.result_path(folder, f"{MODEL_FOLDER}/config.json").parent
        dtype, device = next(lm.model.parameters()).dtype, lm.device
        lm.model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, use_safetensors=True).to(device)
        lm.model.requires_grad_(False)
        lm.model.eval()
