"""LocFT-BF, localized fine-tuning done breadth-first (Yang et al., ICLR 2026, arXiv 2509.22072,
"Fine-tuning done right in model editing"): knowledge edits as plain fine-tuning of one
location, in shuffled mini-batch epochs rather than one edit to convergence after another.

Taken from the paper and the authors' code (ICT-STAR/LocFT, fine-tune.py, hparams/*.yaml): one
weight trains, an MLP down-projection of a late block (Llama-3-8B: layer 22 of 32, lr 5e-4);
Adam without weight decay; the loss is the cross-entropy of the target tokens only (the
target ends with the end-of-sequence token: the chat template's end of turn here); a batch
whose loss is below 1e-2 takes no step; training stops when an epoch's mean batch loss is
below 1e-2; batch 100, 25 epochs. Chosen: the block at Llama-3-8B's relative depth,
round(22 / 32 * L), where --locft-layer is not given (the paper's other configs differ by
model: Qwen2.5-7B layer 6); batch size and steps are the run's (--batch-size, --steps). The
result is the one trained weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from imprint.methods.base import register
from imprint.methods.lm_base import LMMethod
from imprint.util.errors import ImprintError
from imprint.util.settings import setting

RESULT_FILE = "locft_weight.safetensors"


@dataclass
class LocFTSettings:
    locft_layer: int | None = setting(None, "the block whose weight trains", shown_default="round(22/32 x blocks), "
                                      "Llama-3-8B's location in the paper")
    locft_module: str = setting("mlp.down_proj", "the Linear in that block that trains")
    locft_skip_loss: float = setting(1e-2, "a step whose batch loss is below this is skipped")
    locft_stop_loss: float = setting(1e-2, "stop when an epoch's mean batch loss is below this")


@register
class LocFT(LMMethod):
    name = "locft"
    summary = "one late MLP down-projection, breadth-first epochs, skip-on-low-loss, early stop (LocFT-BF)"
    Settings = LocFTSettings
    default_lr = 5e-4
    trains_base_weights = True

    def __init__(self, settings=None):
        super().__init__(settings)
        self.micro_per_epoch, self.accumulate = 1, 1
        self.step_losses: list[float] = []
        self.epoch_sum, self.epoch_count = 0.0, 0

    def location(self, lm) -> str:
        layer = self.settings.locft_layer
        if layer is None:
            layer = min(lm.num_layers - 1, round(22 / 32 * lm.num_layers))
        if not 0 <= layer < lm.num_layers:
            raise ImprintError(f"--locft-layer {layer}: the model has blocks 0 to {lm.num_layers - 1}")
        return f"{layer}.{self.settings.locft_module}"

    def prepare(self, lm, seed: int) -> list[torch.nn.Parameter]:
        modules = dict(lm.blocks().named_modules())
        name = self.location(lm)
        if not isinstance(modules.get(name), torch.nn.Linear):
            raise ImprintError(f"--locft-module {self.settings.locft_module}: no Linear {name} in the blocks; "
                               "name one such as mlp.down_proj")
        self.weight_name = next(n for n, p in lm.model.named_parameters() if p is modules[name].weight)
        self.weight = modules[name].weight
        self.weight.requires_grad_(True)
        return [self.weight]

    def parameter_groups(self, params):
        return [{"params": params, "weight_decay": 0.0}]  # the authors' Adam has none

    def set_epoch_length(self, micro_batches: int, accumulate: int) -> None:
        self.micro_per_epoch, self.accumulate = micro_batches, accumulate

    def observe_loss(self, step: int, micro: int, loss: float) -> None:
        if micro == 0:
            self.step_losses = []
        self.step_losses.append(loss)

    def before_optimizer_step(self, lm, step: int) -> None:
        mean = sum(self.step_losses) / max(len(self.step_losses), 1)
        self.epoch_sum, self.epoch_count = self.epoch_sum + mean, self.epoch_count + 1
        if mean < self.settings.locft_skip_loss:
            self.weight.grad = None  # no step: Adam leaves the weight and its moments

    def should_stop(self, step: int) -> bool:
        if (step * self.accumulate) // self.micro_per_epoch == ((step - 1) * self.accumulate) // self.micro_per_epoch:
            return False  # not the last step of an epoch
        mean = self.epoch_sum / max(self.epoch_count, 1)
        self.epoch_sum, self.epoch_count = 0.0, 0
        return mean < self.settings.locft_stop_loss

    def trainable_state_dict(self, lm) -> dict[str, torch.Tensor]:
        return {self.weight_name: self.weight.detach().float().cpu().contiguous(),
                "epoch_loss": torch.tensor([self.epoch_sum, float(self.epoch_count)], dtype=torch.float64)}

    def load_trainable_state_dict(self, lm, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.weight.copy_(state[self.weight_name])
        self.epoch_sum, self.epoch_count = float(state["epoch_loss"][0]), int(state["epoch_loss"][1])

    def trainable_parameter_count(self, lm) -> int:
        return self.weight.numel()

    def metadata(self) -> dict:
        return {"locft_weight": self.weight_name}

    def save_result(self, lm, folder: Path) -> list[str]:
        save_file({self.weight_name: self.weight.detach().float().cpu().contiguous()}, str(Path(folder) / RESULT_FILE))
        return [RESULT_FILE]

    @classmethod
    @torch.no_grad()
    def apply_result(cls, lm, folder: Path, metadata: dict) -> None:
        path = cls.result_path(folder, RESULT_FILE)
        params = dict(lm.model.named_parameters())
        for name, value in load_file(str(path)).items():
            if name not in params or params[name].shape != value.shape:
                raise ImprintError(f"{path}: {name} does not fit the model; is this a run of another base model?")
            params[name].copy_(value.to(params[name].dtype))
