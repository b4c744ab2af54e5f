"""Pivotal tuning (textual inversion and LoRA trained together, as in cloneofsimo's lora and
diffusers' advanced DreamBooth LoRA script): a new token whose embedding is trained at its own
learning rate, frozen after a set step, while LoRA adapts the UNet (and the text encoder when asked).

Chosen, following diffusers' advanced script: the embedding trains for the first half of the
steps by default (its `train_text_encoder_ti_frac` 0.5) and then stays fixed while LoRA goes on;
the embedding starts from the class name (as --method textual_inversion). Freezing restores the
token's rows after every later update rather than dropping them from the optimizer, so the
parameter set (and gradient clipping) is the same before and after a resume.
Results: diffusers' LoRA file plus learned_embeds.safetensors ({token: vectors}), which diffusers'
`load_textual_inversion` and ComfyUI's embedding loader read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from imprint.methods.adapter import AdapterSettings
from imprint.methods.base import register
from imprint.methods.lora import LoRA
from imprint.methods.textual_inversion import TextualInversion, TextualInversionSettings
from imprint.util.settings import setting


@dataclass
class PivotalSettings(AdapterSettings, TextualInversionSettings):
    embedding_lr: float = setting(5e-4, "learning rate of the token embedding (textual inversion's "
                                  "default); LoRA uses --lr", positive=True)
    freeze_embedding_at: int | None = setting(None, "the step after which the token embedding stops "
                                              "training (LoRA goes on)", non_negative=True,
                                              shown_default="half of --steps, as diffusers' advanced "
                                              "DreamBooth script")

    def resolve_steps(self, steps: int) -> None:
        if self.freeze_embedding_at is None:
            self.freeze_embedding_at = steps // 2


@register
class Pivotal(LoRA):
    name = "pivotal"
    adapters_off_is_base = False  # the trained token embedding stays when the LoRA is off
    summary = "textual inversion + LoRA in one run (embedding frozen after a step); LoRA file + embedding file"
    Settings = PivotalSettings
    default_lr = 1e-4

    def __init__(self, settings=None):
        super().__init__(settings)
        self.inversion = TextualInversion(TextualInversionSettings(num_vectors=self.settings.num_vectors))
        self._frozen_token_rows: dict[str, torch.Tensor] | None = None
        self.embeddings: list[torch.nn.Parameter] = []

    def trained_parts(self) -> set[str]:
        return {"denoiser", "text_encoder"}

    def float32_parts(self) -> set[str]:
        return {"text_encoder"}  # its embedding table is trained

    def add_trainables(self, family) -> list[torch.nn.Parameter]:
        self.embeddings = self.inversion.prepare(family, self.subject)  # the new token first: it resizes them
        lora = []
        for part in family.parts(self.adapter_parts()):
            module = family.modules[part]
            module.add_adapter(self.peft_config(part, family))
            lora += [p for p in module.parameters() if p.requires_grad and not self.is_embedding(p)]
        for p in lora:
            p.data = p.data.float()
        for embedding in self.embeddings:
            embedding.requires_grad_(True)  # PEFT froze every base weight, the embedding tables too
        self.lora_params = lora
        return [*lora, *self.embeddings]

    def is_embedding(self, p: torch.nn.Parameter) -> bool:
        return any(p is e for e in self.embeddings)

    def parameter_groups(self, params):
        return [{"params": [p for p in params if not self.is_embedding(p)]},
                {"params": list(self.embeddings), "lr": self.settings.embedding_lr}]

    def prompt_token(self) -> str:
        return self.inversion.prompt_token()

    def metadata(self) -> dict:
        return {**super().metadata(), **self.inversion.metadata()}

    def after_optimizer_step(self, family, step: int) -> None:
        self.inversion.after_optimizer_step(family, step)  # the vocabulary's other rows stay put
        if step == self.settings.freeze_embedding_at:
            self._frozen_token_rows = self.inversion.learned_embeds(family)
        elif step > self.settings.freeze_embedding_at:
            self.restore_token_rows(family)

    def restore_token_rows(self, family) -> None:
        for name, weight in self.inversion.embedding_tables(family).items():
            with torch.no_grad():
                weight[self.inversion.ids_by_encoder[name]] = self._frozen_token_rows[name].to(weight.device, weight.dtype)

    def trainable_state_dict(self, family) -> dict[str, torch.Tensor]:
        state = {f"lora.{i}": p.detach().float().cpu().contiguous() for i, p in enumerate(self.lora_params)}
        return {**state, **self.inversion.trainable_state_dict(family)}

    def load_trainable_state_dict(self, family, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.lora_params):
                p.copy_(state[f"lora.{i}"])
        self.inversion.load_trainable_state_dict(family, state)
        # resumed past the freeze: the rows in the checkpoint are the frozen ones
        self._frozen_token_rows = self.inversion.learned_embeds(family)

    def save_result(self, family, folder: Path) -> list[str]:
        files = super().save_result(family, folder)
        return files + self.inversion.save_result(family, folder)

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        TextualInversion.load_into_pipeline(pipe, folder, metadata)
        super().load_into_pipeline(pipe, folder, metadata)

    @classmethod
    def rewrite_prompt(cls, prompt: str, metadata: dict) -> str:
        return TextualInversion.rewrite_prompt(prompt, metadata)
