"""What every language-model method is: its settings, what it makes trainable in a causal LM,
its trainable state, its result files and how a result goes back onto the base model.

`imprint lm` talks to a method only through this class; a new method is one file that
subclasses it with `modality = "text"` and registers itself (methods/base.register). After
`apply_result` the model is the fine-tuned one, whatever the method, so evaluation, LiNeS and
merging read every run the same way: its weights against the base's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class NoSettings:
    pass


class LMMethod(ABC):
    name = "base"
    modality = "text"
    summary = ""
    Settings: type = NoSettings
    default_lr = 1e-4
    trains_base_weights = False   # the model's own weights change: it is loaded in float32
    adapters_off_is_base = False  # switching the method off gives the base back (a free reference)

    def __init__(self, settings=None):
        self.settings = settings if settings is not None else self.Settings()

    @abstractmethod
    def prepare(self, lm, seed: int) -> list[torch.nn.Parameter]:
        """Make the trained parameters of `lm` (a CausalLM) trainable, or add them; return them."""

    def parameter_groups(self, params: list[torch.nn.Parameter]) -> list[dict]:
        return [{"params": params}]

    def make_optimizer(self, params: list[torch.nn.Parameter], settings) -> torch.optim.Optimizer | None:
        """An optimizer of the method's own (LIFT's sparse Adam), or None for --optimizer's."""
        return None

    def attach_optimizer(self, optimizer) -> None:
        """The run's optimizer, once made (for a method that resets its state between stages)."""

    def set_run_length(self, steps: int) -> None:
        """The run's optimizer steps, for methods whose schedule is a share of the run."""

    def set_epoch_length(self, micro_batches: int, accumulate: int) -> None:
        """Micro-batches per pass over the training examples, and per optimizer step."""

    def begin_step(self, lm, step: int) -> None:
        """Before the first micro-batch of update `step` (0-based; also the first step after a resume)."""

    def observe_loss(self, step: int, micro: int, loss: float) -> None:
        """The answer loss of each micro-batch, as it is computed."""

    def before_optimizer_step(self, lm, step: int) -> None:
        """After update `step`'s gradients are summed (0-based); a method that skips the step sets them to None."""

    def should_stop(self, step: int) -> bool:
        """After update `step` (1-based): end training here (a method's early stop)."""
        return False

    def after_optimizer_step(self, lm, step: int) -> None:
        """After update `step` (1-based)."""

    def regularization(self, lm) -> torch.Tensor | None:
        """A loss on the method's own parameters, added to every step's, or None."""
        return None

    def trainable_names(self, lm) -> list[str]:
        """The model parameters a checkpoint holds (default: those that train now)."""
        return [name for name, p in lm.model.named_parameters() if p.requires_grad]

    def trainable_state_dict(self, lm) -> dict[str, torch.Tensor]:
        """What a checkpoint holds to restore training exactly."""
        params = dict(lm.model.named_parameters())
        return {name: params[name].detach().float().cpu().contiguous() for name in self.trainable_names(lm)}

    def load_trainable_state_dict(self, lm, state: dict[str, torch.Tensor]) -> None:
        params = dict(lm.model.named_parameters())
        missing = [n for n in self.trainable_names(lm) if n not in state]
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} tensor(s), e.g. {missing[0]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].dtype))

    def trainable_parameter_count(self, lm) -> int:
        params = dict(lm.model.named_parameters())
        return sum(params[name].numel() for name in self.trainable_names(lm))

    def metadata(self) -> dict:
        return {}

    @abstractmethod
    def save_result(self, lm, folder: Path) -> list[str]:
        """Write the files users keep; return their names (relative to folder)."""

    @staticmethod
    def result_path(folder: Path, name: str) -> Path:
        """A result file or folder of a run, or a one-line error where it is missing."""
        path = Path(folder) / name
        if not path.exists():
            from imprint.util.errors import ImprintError

            raise ImprintError(f"{folder}: no {name}; the run folder is damaged or of another method")
        return path

    @classmethod
    @abstractmethod
    def apply_result(cls, lm, folder: Path, metadata: dict) -> None:
        """Turn `lm`, the base model, into the run's fine-tuned model."""
