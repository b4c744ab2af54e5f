"""What every method is: its settings, the parts it trains, its trainable state, its files.

The task talks to a method only through this class, so a new method is one file that
subclasses it, declares a `Settings` dataclass (its flags and config keys) and registers
itself; the same registry creates methods for training and loads their results.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

METHODS: dict[str, type["Method"]] = {}   # image methods (imprint train)
LM_METHODS: dict[str, type] = {}           # language-model methods (imprint lm train), methods/lm_base.py


def register(cls: type) -> type:
    """One decorator for every method; a method's modality picks its table, as the same name
    (lora, full) is one method per modality: the same maths on other parts, with other files."""
    (LM_METHODS if getattr(cls, "modality", "image") == "text" else METHODS)[cls.name] = cls
    return cls


@dataclass
class Subject:
    """Who is being taught: the identifier the user writes and the class noun."""

    token: str
    class_name: str
    # (N, D) features of each photo from the method's photo_encoder (and, with --flip, N more:
    # the mirrored photos'), for methods that condition on the photo itself; else None
    photo_features: torch.Tensor | None = None


@dataclass
class NoSettings:
    pass


def pipeline_denoiser(pipe) -> torch.nn.Module:
    """A diffusers pipeline's denoiser: the UNet, or the transformer of SD3 / FLUX."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def pipeline_modules(pipe) -> dict[str, torch.nn.Module]:
    """A pipeline's networks by component name (unet / transformer, text_encoder, text_encoder_2, ...)."""
    return {name: part for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)}


def replace_word(prompt: str, word: str, replacement: str) -> str:
    return re.sub(rf"(?<!\S){re.escape(word)}(?!\S)", replacement, prompt)


class Method(ABC):
    name = "base"
    summary = ""                 # one line for `imprint methods`
    Settings: type = NoSettings
    default_lr = 1e-4            # when --lr is not given
    # switching the method's adapters off gives the base model back exactly: the frozen
    # reference of RPO-like terms comes for free (family.reference_prediction)
    adapters_off_is_base = False

    def __init__(self, settings=None):
        self.settings = settings if settings is not None else self.Settings()
        self.subject: Subject | None = None

    # --- training -------------------------------------------------------------------------
    @abstractmethod
    def trained_parts(self) -> set[str]:
        """The roles of the parts that receive gradients, "denoiser" and / or "text_encoder" (the
        family says which of its parts play them: SD's unet, FLUX's transformer, SDXL's two text
        encoders); the rest stays frozen."""

    def float32_parts(self) -> set[str]:
        """Parts whose own weights are optimised, so they stay float32 under mixed precision.
        Adapter methods return none: their frozen base weights take the compute dtype."""
        return self.trained_parts()

    def prepare(self, family, subject: Subject) -> list[torch.nn.Parameter]:
        """Add adapters / tokens to the family's parts; return the parameters to optimise."""
        self.subject = subject
        return self.add_trainables(family)

    @abstractmethod
    def add_trainables(self, family) -> list[torch.nn.Parameter]: ...

    def prompt_token(self) -> str:
        """The text that stands for the subject in training prompts."""
        return self.subject.token

    def metadata(self) -> dict:
        """What generate needs to load the result, beyond the run config."""
        return {"prompt_token": self.prompt_token()}

    photo_encoder_flag = ""  # the flag that chooses photo_encoder, for errors

    def photo_encoder(self, family) -> str | None:
        """The frozen image encoder (a name the task's image encoder loads) whose features of each
        photo the method reads (Subject.photo_features, and a row's photo in batch.extras["photo"]),
        or None."""
        return None

    def condition_subject_rows(self, conditioning: dict, rows: torch.Tensor, batch=None) -> dict:
        """The denoiser's conditioning with the method's change on the subject's rows (`rows`, a
        bool per row, of `batch`); most methods change weights, not conditioning."""
        return conditioning

    def losses(self, batch, rows: torch.Tensor, family, plain: dict) -> dict[str, torch.Tensor]:
        """Losses of the method's own beside the objective's (named, added to the step's), given
        the batch, its subject rows and `plain`, its conditioning before condition_subject_rows."""
        return {}

    def regularization(self) -> torch.Tensor | None:
        """A loss on the method's own parameters, added to every step's, or None."""
        return None

    def refinement_plan(self, family) -> tuple[list[int], int] | None:
        """(sampling timesteps, iterations each) for a method that refines one state per
        timestep after training (the task runs it), or None."""
        return None

    def refinable_parameters(self) -> list[torch.nn.Parameter]:
        """What a per-timestep refinement optimises."""
        return []

    def refinable_state(self):
        """The state a per-timestep refinement keeps after each timestep."""

    def set_refined(self, timesteps: list[int], states: list) -> None:
        """The states of every timestep, in refinement order."""

    def wrap_pipeline(self, pipe) -> None:
        """Make a pipeline over the live parts sample with what is being trained (for methods
        whose result is not in the parts' weights)."""

    def parameter_groups(self, params: list[torch.nn.Parameter]) -> list[dict]:
        """The optimizer's groups of `params`; a method whose parts learn at their own rate splits them."""
        return [{"params": params}]

    def after_optimizer_step(self, family, step: int) -> None:
        """Hook for methods that must constrain weights after update `step` (1-based)."""

    def trainable_state_dict(self, family) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint must hold to restore training exactly."""
        return {
            f"{part}.{name}": p.detach().float().cpu().contiguous()
            for part in family.parts(self.trained_parts())
            for name, p in family.modules[part].named_parameters() if p.requires_grad
        }

    def load_trainable_state_dict(self, family, state: dict[str, torch.Tensor]) -> None:
        for part in family.parts(self.trained_parts()):
            prefix = f"{part}."
            wanted = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            params = dict(family.modules[part].named_parameters())
            missing = [n for n, p in params.items() if p.requires_grad and n not in wanted]
            if missing:
                raise KeyError(f"checkpoint lacks {len(missing)} tensor(s) of {part}, e.g. {missing[0]}")
            with torch.no_grad():
                for name, value in wanted.items():
                    params[name].copy_(value.to(params[name].dtype))

    # --- result ---------------------------------------------------------------------------
    @abstractmethod
    def save_result(self, family, folder: Path) -> list[str]:
        """Write the files users keep; return their names (relative to folder)."""

    @classmethod
    @abstractmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        """Apply a finished run to a diffusers pipeline of its base model."""

    @classmethod
    def appearance_encoder(cls, folder: Path, metadata: dict) -> str | None:
        """The image encoder whose features of an image `add_appearance` takes (generate's
        --keep-appearance), or None where the method has no use for one."""
        return None

    @classmethod
    def add_appearance(cls, pipe, folder: Path, metadata: dict, features: torch.Tensor, weight: float) -> None:
        """Make the pipeline's images keep the appearance (pose, background) of an image whose
        encoder features are `features` (1, D)."""
        raise NotImplementedError(f"{cls.name} takes no appearance image")

    @classmethod
    def rewrite_prompt(cls, prompt: str, metadata: dict) -> str:
        """Let users write the run's token; methods whose token differs swap it in."""
        token, prompt_token = metadata.get("token"), metadata.get("prompt_token")
        if token and prompt_token and token != prompt_token:
            return replace_word(prompt, token, prompt_token)
        return prompt
