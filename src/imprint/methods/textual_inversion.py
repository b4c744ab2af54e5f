"""Textual inversion (Gal et al. 2022, arXiv 2208.01618): a new token whose embedding
vector(s), initialised from the class name, are the only weights trained."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from imprint.util.errors import ImprintError
from imprint.methods.base import Method, register, replace_word
from imprint.util.settings import setting

log = logging.getLogger("imprint")

WEIGHT_NAME = "learned_embeds.safetensors"


@dataclass
class TextualInversionSettings:
    num_vectors: int = setting(1, "embedding vectors of the new token", positive=True)


@register
class TextualInversion(Method):
    name = "textual_inversion"
    summary = "the embedding vectors of a new token only; diffusers learned_embeds file"
    Settings = TextualInversionSettings
    default_lr = 5e-4

    def __init__(self, settings=None):
        super().__init__(settings)
        self.placeholder = ""
        self.token_ids: list[int] = []
        self._frozen_rows: torch.Tensor | None = None

    def trained_parts(self) -> set[str]:
        return {"text_encoder"}

    def tokens(self) -> list[str]:
        return [self.placeholder] + [f"{self.placeholder}_{i}" for i in range(1, self.settings.num_vectors)]

    def prompt_token(self) -> str:
        return " ".join(self.tokens())

    def add_trainables(self, family) -> list[torch.nn.Parameter]:
        if len(family.text_encoder_names) > 1:
            # SDXL's two vocabularies would each need the token and its own vectors
            raise ImprintError(f"--method {self.name}: a new token in one text encoder is what this imprint "
                               f"trains; the {family.name} family has {len(family.text_encoder_names)}: "
                               "use --method lora (with --train-text-encoder)")
        tokenizer, text_encoder = family.tokenizer, family.text_encoder
        self.placeholder = self.subject.token
        if self.placeholder in tokenizer.get_vocab():
            # an existing word cannot get a new embedding: use <token>, as the TI papers do
            self.placeholder = f"<{self.subject.token}>"
            log.info("token %r is already in the vocabulary; training %r instead",
                     self.subject.token, self.placeholder)
        if tokenizer.add_tokens(self.tokens()) != len(self.tokens()):
            raise ImprintError(
                f"--token {self.subject.token}: {self.placeholder!r} already exists in the tokenizer; "
                "pick a new token"
            )
        text_encoder.resize_token_embeddings(len(tokenizer))
        self.token_ids = tokenizer.convert_tokens_to_ids(self.tokens())

        embeddings = text_encoder.get_input_embeddings().weight
        class_ids = tokenizer(self.subject.class_name, add_special_tokens=False).input_ids
        if not class_ids:
            raise ImprintError(f"--class-name {self.subject.class_name!r}: tokenizes to nothing")
        with torch.no_grad():
            init = embeddings[class_ids].mean(0)  # a multi-word class starts at its mean
            embeddings[self.token_ids] = init
        text_encoder.requires_grad_(False)
        embeddings.requires_grad_(True)
        self._frozen_rows = embeddings.detach().clone()
        return [embeddings]

    def metadata(self) -> dict:
        return {**super().metadata(), "placeholder": self.placeholder}

    def after_optimizer_step(self, family, step: int) -> None:
        # The optimiser sees the whole embedding table (weight decay and Adam moments touch
        # every row); put back every row but the new tokens', as the TI paper does.
        weight = family.text_encoder.get_input_embeddings().weight
        keep = torch.ones(weight.shape[0], dtype=torch.bool)
        keep[self.token_ids] = False
        with torch.no_grad():
            weight[keep] = self._frozen_rows[keep].to(weight.dtype)

    def learned_embeds(self, family) -> torch.Tensor:
        weight = family.text_encoder.get_input_embeddings().weight
        return weight[self.token_ids].detach().float().cpu().contiguous()

    def trainable_state_dict(self, family) -> dict[str, torch.Tensor]:
        return {"learned_embeds": self.learned_embeds(family)}

    def load_trainable_state_dict(self, family, state: dict[str, torch.Tensor]) -> None:
        weight = family.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[self.token_ids] = state["learned_embeds"].to(weight.dtype)

    def save_result(self, family, folder: Path) -> list[str]:
        # the layout of diffusers' textual_inversion example: {token: (num_vectors, dim)}
        save_file({self.placeholder: self.learned_embeds(family)}, str(folder / WEIGHT_NAME))
        return [WEIGHT_NAME]

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        pipe.load_textual_inversion(str(folder / WEIGHT_NAME), token=metadata["placeholder"])

    @classmethod
    def rewrite_prompt(cls, prompt: str, metadata: dict) -> str:
        # diffusers expands a multi-vector placeholder itself; the prompt needs the placeholder
        token, placeholder = metadata.get("token"), metadata["placeholder"]
        return replace_word(prompt, token, placeholder) if token and token != placeholder else prompt
