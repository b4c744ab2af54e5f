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
        self.token_ids: list[int] = []  # the first text encoder's (SD's only one)
        self.ids_by_encoder: dict[str, list[int]] = {}
        self._frozen_rows: dict[str, torch.Tensor] = {}

    def trained_parts(self) -> set[str]:
        return {"text_encoder"}

    def tokens(self) -> list[str]:
        return [self.placeholder] + [f"{self.placeholder}_{i}" for i in range(1, self.settings.num_vectors)]

    def prompt_token(self) -> str:
        return " ".join(self.tokens())

    @staticmethod
    def encoders(family) -> list[tuple[str, object, torch.nn.Module]]:
        """(part, tokenizer, text encoder) of each vocabulary the token joins (SDXL: CLIP-L and CLIP-G)."""
        return [(name, getattr(family, family.tokenizer_names[name]), family.modules[name])
                for name in family.text_encoder_names]

    def add_trainables(self, family) -> list[torch.nn.Parameter]:
        from diffusers.loaders import TextualInversionLoaderMixin

        if not issubclass(family.pipeline_class(), TextualInversionLoaderMixin):
            raise ImprintError(f"--method {self.name}: the {family.name} family's pipeline loads no token embeddings "
                               "(diffusers' textual inversion loader); use --method lora")
        encoders = self.encoders(family)
        self.placeholder = self.subject.token
        if any(self.placeholder in tokenizer.get_vocab() for _, tokenizer, _ in encoders):
            # an existing word cannot get a new embedding: use <token>, as the TI papers do
            self.placeholder = f"<{self.subject.token}>"
            log.info("token %r is already in the vocabulary; training %r instead",
                     self.subject.token, self.placeholder)
        weights = []
        for name, tokenizer, text_encoder in encoders:
            if tokenizer.add_tokens(self.tokens()) != len(self.tokens()):
                raise ImprintError(f"--token {self.subject.token}: {self.placeholder!r} already exists in the "
                                   "tokenizer; pick a new token")
            text_encoder.resize_token_embeddings(len(tokenizer))
            ids = tokenizer.convert_tokens_to_ids(self.tokens())
            embeddings = text_encoder.get_input_embeddings().weight
            class_ids = tokenizer(self.subject.class_name, add_special_tokens=False).input_ids
            if not class_ids:
                raise ImprintError(f"--class-name {self.subject.class_name!r}: tokenizes to nothing")
            with torch.no_grad():
                embeddings[ids] = embeddings[class_ids].mean(0)  # a multi-word class starts at its mean
            text_encoder.requires_grad_(False)
            embeddings.requires_grad_(True)
            self.ids_by_encoder[name] = ids
            self._frozen_rows[name] = embeddings.detach().clone()
            weights.append(embeddings)
        self.token_ids = self.ids_by_encoder[encoders[0][0]]
        return weights

    def embedding_tables(self, family) -> dict[str, torch.Tensor]:
        return {name: family.modules[name].get_input_embeddings().weight for name in self.ids_by_encoder}

    def metadata(self) -> dict:
        return {**super().metadata(), "placeholder": self.placeholder}

    def after_optimizer_step(self, family, step: int) -> None:
        # The optimiser sees the whole embedding table (weight decay and Adam moments touch
        # every row); put back every row but the new tokens', as the TI paper does.
        for name, weight in self.embedding_tables(family).items():
            keep = torch.ones(weight.shape[0], dtype=torch.bool)
            keep[self.ids_by_encoder[name]] = False
            with torch.no_grad():
                weight[keep] = self._frozen_rows[name][keep].to(weight.dtype)

    def learned_embeds(self, family) -> dict[str, torch.Tensor]:
        return {name: weight[self.ids_by_encoder[name]].detach().float().cpu().contiguous()
                for name, weight in self.embedding_tables(family).items()}

    @staticmethod
    def state_key(name: str) -> str:
        return "learned_embeds" if name == "text_encoder" else f"learned_embeds.{name}"

    def trainable_state_dict(self, family) -> dict[str, torch.Tensor]:
        return {self.state_key(name): rows for name, rows in self.learned_embeds(family).items()}

    def load_trainable_state_dict(self, family, state: dict[str, torch.Tensor]) -> None:
        for name, weight in self.embedding_tables(family).items():
            with torch.no_grad():
                weight[self.ids_by_encoder[name]] = state[self.state_key(name)].to(weight.device, weight.dtype)

    def save_result(self, family, folder: Path) -> list[str]:
        learned = self.learned_embeds(family)
        if family.embedding_file_keys:  # SDXL's layout, which A1111 / ComfyUI read: {"clip_l": ..., "clip_g": ...}
            tensors = {family.embedding_file_keys[name]: rows for name, rows in learned.items()}
        else:  # the layout of diffusers' textual_inversion example: {token: (num_vectors, dim)}
            tensors = {self.placeholder: learned["text_encoder"]}
        save_file(tensors, str(folder / WEIGHT_NAME))
        return [WEIGHT_NAME]

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        from safetensors.torch import load_file

        path, token = folder / WEIGHT_NAME, metadata["placeholder"]
        tensors = load_file(str(path))
        if "clip_l" not in tensors:
            pipe.load_textual_inversion(str(path), token=token)
            return
        for key, encoder, tokenizer in (("clip_l", "text_encoder", "tokenizer"), ("clip_g", "text_encoder_2",
                                                                                    "tokenizer_2")):
            if key in tensors:
                pipe.load_textual_inversion(tensors[key], token=token, text_encoder=getattr(pipe, encoder),
                                            tokenizer=getattr(pipe, tokenizer))

    @classmethod
    def rewrite_prompt(cls, prompt: str, metadata: dict) -> str:
        # diffusers expands a multi-vector placeholder itself; the prompt needs the placeholder
        token, placeholder = metadata.get("token"), metadata["placeholder"]
        return replace_word(prompt, token, placeholder) if token and token != placeholder else prompt
