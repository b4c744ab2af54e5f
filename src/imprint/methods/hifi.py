"""HiFi Tuner (Wang et al., arXiv 2312.00079), its textual-inversion-based training: n learned
vectors c_s in the text encoder's output space stand for the subject, written over the last n
(padding) vectors of every encoded subject prompt.

Taken from the paper: n = 5; c_s starts as the last n vectors of the encoded null text (phi_s)
and is pulled back to them by w_s ||c_s - phi_s||^2 (its parameter regularisation); the
mask-guided loss is --masks with --mask-loss-weight 0 (objectives/mask.py); lr 5e-3 with Adam
(our AdamW with the run's weight decay). Chosen here: w_s (the paper gives no value) 1e-2 on the
squared error averaged over the n x d elements (not summed); c_s applies to the subject's rows
only (class rows with prior preservation keep their plain prompt); the text encoder and UNet
stay frozen. Not yet here: the step-wise representations (one c_s per sampling step, refined
after training), reference-guided generation, the variant on top of LoRA / full fine-tuning.
The result is hifi_vectors.safetensors; a pipeline gets it by a wrapper of its encode_prompt
that writes c_s over the prompt's last n vectors (the negative prompt's stay)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from imprint.methods.base import Method, register
from imprint.util.settings import setting

WEIGHT_NAME = "hifi_vectors.safetensors"


@dataclass
class HiFiSettings:
    hifi_vectors: int = setting(5, "learned vectors written over the last ones of the encoded prompt (the paper's 5)",
                                positive=True)
    hifi_reg_weight: float = setting(1e-2, "weight w_s of the pull back to the null text's vectors (mean squared; "
                                     "the paper gives no value)", non_negative=True)


def with_subject_vectors(embeds: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """(B, L, D) prompt encodings with their last n vectors replaced by `vectors` (n, D)."""
    n = vectors.shape[0]
    return torch.cat([embeds[:, :-n], vectors.to(embeds).expand(embeds.shape[0], n, -1)], dim=1)


@register
class HiFi(Method):
    name = "hifi"
    summary = "HiFi Tuner: learned vectors over the encoded prompt's last ones, pulled to the null text's"
    Settings = HiFiSettings
    default_lr = 5e-3

    def trained_parts(self) -> set[str]:
        return set()  # only c_s, which no part of the model holds

    def add_trainables(self, family) -> list[torch.nn.Parameter]:
        n = self.settings.hifi_vectors
        with torch.no_grad():
            null = family.encode_prompts(family.tokenize([""]))["prompt_embeds"][0, -n:].float()
        self.null_vectors = null.detach().clone()
        self.vectors = torch.nn.Parameter(null.clone())
        return [self.vectors]

    def condition_subject_rows(self, conditioning: dict, rows: torch.Tensor) -> dict:
        embeds = conditioning["prompt_embeds"]
        replaced = with_subject_vectors(embeds, self.vectors)
        rows = rows.to(embeds.device).reshape(-1, 1, 1)
        return {**conditioning, "prompt_embeds": torch.where(rows, replaced, embeds)}

    def regularization(self) -> torch.Tensor:
        return self.settings.hifi_reg_weight * ((self.vectors - self.null_vectors.to(self.vectors)) ** 2).mean()

    def wrap_pipeline(self, pipe) -> None:
        install(pipe, self.vectors.detach())

    def trainable_state_dict(self, family) -> dict[str, torch.Tensor]:
        return {"subject_vectors": self.vectors.detach().float().cpu().contiguous()}

    def load_trainable_state_dict(self, family, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.vectors.copy_(state["subject_vectors"].to(self.vectors))

    def save_result(self, family, folder: Path) -> list[str]:
        save_file(self.trainable_state_dict(family), str(folder / WEIGHT_NAME))
        return [WEIGHT_NAME]

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        install(pipe, load_file(str(folder / WEIGHT_NAME))["subject_vectors"])


def install(pipe, vectors: torch.Tensor) -> None:
    """The pipeline's prompt encodings get the subject vectors (every prompt, not the negative)."""
    original = getattr(pipe, "_imprint_encode_prompt", pipe.encode_prompt)

    def encode_prompt(*args, **kwargs):
        positive, negative = original(*args, **kwargs)
        return with_subject_vectors(positive, vectors), negative

    pipe._imprint_encode_prompt = original
    pipe.encode_prompt = encode_prompt
