"""The batch a denoising step sees and the loss terms that make its objective.

A term sees the batch, the family and the model's output (through TermContext), nothing
else: it can weight the per-element denoising error (masks, SNR weighting), add a loss of
its own, ask for the frozen model's prediction (adapters off) or for prompt encodings.
A new term is one file that subclasses LossTerm and registers itself; the loop never changes.
"""

from __future__ import annotations

import contextlib
from abc import ABC
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

TERMS: dict[str, type["LossTerm"]] = {}

INSTANCE, CLASS, NEGATIVE = "instance", "class", "negative"  # NEGATIVE: a base-model image (RPO)


def register_term(cls: type["LossTerm"]) -> type["LossTerm"]:
    TERMS[cls.name] = cls
    return cls


@dataclass
class Batch:
    """One step's rows: clean latents, noise, timesteps, the family's noisy input and target,
    the conditioning (a dict of tensors, batch first), and what each row is."""

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    noisy: torch.Tensor
    target: torch.Tensor
    conditioning: dict[str, torch.Tensor]
    roles: list[str]                                # INSTANCE, CLASS or NEGATIVE per row
    masks: torch.Tensor | None = None               # (B, 1, h, w) at latent size, 1 = subject
    captions: list[str] | None = None
    pixels: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-row data a term needs (labels, pairs)
    draws: torch.Generator | None = None  # a term's own random draws, seeded by (seed, step): resumable

    def rows(self, role: str) -> torch.Tensor:
        return torch.tensor([r == role for r in self.roles])

    def has(self, role: str) -> bool:
        return role in self.roles


class TermContext:
    """What a term may look at: the batch, the family, the prediction and the (weighted)
    per-row denoising error; the frozen reference prediction is computed once, on demand."""

    def __init__(self, batch: Batch, family, prediction: torch.Tensor, row_errors: torch.Tensor, autocast=None,
                 weight: torch.Tensor | None = None):
        self.batch, self.family, self.prediction, self.row_errors = batch, family, prediction, row_errors
        self.autocast = autocast or contextlib.nullcontext
        self.weight = weight  # the terms' per-element weights on the error, or None

    @cached_property
    def reference_prediction(self) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.family.reference_prediction(self.batch.noisy, self.batch.timesteps,
                                                    self.batch.conditioning)

    @cached_property
    def reference_row_errors(self) -> torch.Tensor:
        """The frozen model's per-row error, weighted as the trained model's (row_errors)."""
        target = self.batch.target.to(self.prediction.device).float()
        errors = F.mse_loss(self.reference_prediction.float(), target, reduction="none")
        if self.weight is not None:
            errors = errors * self.weight
        return errors.mean(dim=list(range(1, errors.ndim)))

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        with self.autocast():
            return self.family.encode_prompts(self.family.tokenize(prompts))

    def pooled_text(self, prompts: list[str]) -> torch.Tensor:
        """The text encoder's pooled output per prompt (CLIP: the EOS token after the final norm)."""
        with self.autocast():
            return self.family.pooled_text_embeddings(self.family.tokenize(prompts))


class LossTerm(ABC):
    """A part of the objective. `Settings` (a dataclass or None) holds its knobs, which become
    flags and config keys; `enabled` says whether the settings switch it on."""

    name = "term"
    Settings = None
    group = "objective"         # the --help section and TOML table of its settings
    needs_text_encoder = False  # keep the text encoder after caching (for encode_prompts)
    needs_trained_text_encoder = False  # its gradient reaches only what is trained in the text encoder

    def setup(self, family, fill) -> None:
        """Once, before the first step (and before a resume loads the trained state): the family
        as the base model has it, and `fill`, which fills {token} / {class_name} in a prompt."""

    def __init__(self, settings=None):
        self.settings = settings

    def enabled(self) -> bool:
        return True

    def weight(self, batch: Batch, family) -> torch.Tensor | None:
        """A factor on the per-element denoising error (broadcast against it), or None."""
        return None

    def loss(self, ctx: TermContext) -> torch.Tensor | None:
        """This term's addition to the loss, or None."""
        return None


class Objective:
    """The sum of the terms' losses over one batch; the terms' weights multiply the error.
    A step whose rows have two shapes (aspect-ratio buckets beside square class images) is two
    batches, one per shape: `losses` of each, added up, then `total`."""

    def __init__(self, terms: list[LossTerm]):
        self.terms = [t for t in terms if t.enabled()]

    @classmethod
    def from_settings(cls, settings_by_term: dict[str, object]) -> "Objective":
        return cls([TERMS[name](settings_by_term.get(name)) for name in TERMS])

    def has(self, name: str) -> bool:
        """Whether the term `name` is on."""
        return any(t.name == name for t in self.terms)

    @property
    def needs_text_encoder(self) -> bool:
        return any(t.needs_text_encoder for t in self.terms)

    def setup(self, family, fill) -> None:
        for term in self.terms:
            term.setup(family, fill)

    def __call__(self, batch: Batch, family, prediction: torch.Tensor,
                 autocast=None) -> tuple[torch.Tensor, dict[str, float]]:
        return self.total(self.losses(batch, family, prediction, autocast))

    def losses(self, batch: Batch, family, prediction: torch.Tensor, autocast=None) -> dict[str, torch.Tensor]:
        """Each term's loss over this batch (terms with nothing to add left out)."""
        errors = F.mse_loss(prediction.float(), batch.target.to(prediction.device).float(), reduction="none")
        weights = None
        for term in self.terms:
            weight = term.weight(batch, family)
            if weight is not None:
                weight = weight.to(errors.device, errors.dtype)
                weights = weight if weights is None else weights * weight
        if weights is not None:
            errors = errors * weights
        row_errors = errors.mean(dim=list(range(1, errors.ndim)))
        ctx = TermContext(batch, family, prediction, row_errors, autocast, weights)
        parts = {}
        for term in self.terms:
            value = term.loss(ctx)
            if value is not None:
                parts[term.name] = value
        return parts

    @staticmethod
    def total(parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss, and each term's part to log (when there are several)."""
        total = sum(parts.values())
        return total, {f"loss_{k}": float(v.detach()) for k, v in parts.items()} if len(parts) > 1 else {}

