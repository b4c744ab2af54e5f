"""HFT, Half Fine-Tuning (Hui et al., arXiv 2404.18466): full fine-tuning in which half of each
block's parameters stay frozen, chosen at category level, with a new random half per stage.

Taken from the paper (its Figure 2 and summaries of its Sec. 3; the authors published no code):
in each block, 2 of the 4 attention matrices (q, k, v, o) train; of the 3 MLP matrices (gate,
up, down) 2 train in a random half of the blocks and 1 in the others, so that half of them do
overall; 1 of the 2 norms trains; each block draws independently; a stage draws a new half.
Chosen here: parameters outside the blocks (embeddings, lm_head, final norm) train, as the
summaries say the paper's do ("updated by default"), and `--hft-outside-blocks freeze` freezes
them; `--hft-stages N` cuts one run into N equal stages, each with its own half (the paper's
stages are SFT then DPO, or successive tasks: one run is one stage by default). A frozen
parameter gets no gradient, so AdamW leaves it and its moments untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imprint.util.rng import step_generator
from imprint.methods.base import register
from imprint.methods.lm_full import LMFull
from imprint.util.errors import ImprintError
from imprint.util.settings import setting

HFT_STREAM = 20
CATEGORIES = {  # category -> its members, by the last part of the module name
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "norm": ("input_layernorm", "post_attention_layernorm"),
}


@dataclass
class HFTSettings:
    hft_stages: int = setting(1, "stages of the run, each with a new random half (equal numbers of steps)",
                              positive=True)
    hft_outside_blocks: str = setting("train", "the parameters outside the blocks (embeddings, lm_head, final "
                                      "norm): train them, or freeze them", choices=("train", "freeze"))


def draw_half(num_layers: int, generator: torch.Generator) -> list[set[str]]:
    """Per block, the member names that train: 2 of 4 attention, 1 of 2 norms, and of the MLP 2 of 3
    in a random half of the blocks (rounded down), 1 of 3 in the others."""
    two_mlp = set(torch.randperm(num_layers, generator=generator)[: num_layers // 2].tolist())
    out = []
    for layer in range(num_layers):
        chosen = set()
        for category, members in CATEGORIES.items():
            n = {"attention": 2, "norm": 1, "mlp": 2 if layer in two_mlp else 1}[category]
            picks = torch.randperm(len(members), generator=generator)[:n].tolist()
            chosen |= {members[i] for i in picks}
        out.append(chosen)
    return out


def member_of(parameter_name: str) -> str | None:
    for members in CATEGORIES.values():
        for member in members:
            if f".{member}." in f".{parameter_name}":
                return member
    return None


@register
class HFT(LMFull):
    name = "hft"
    summary = "half of each block's weights frozen at category level, a new half per stage (Half Fine-Tuning)"
    Settings = HFTSettings
    default_lr = 1e-5

    def __init__(self, settings=None):
        super().__init__(settings)
        self.seed, self.stage, self.steps = 0, None, 1

    def prepare(self, lm, seed: int) -> list[torch.nn.Parameter]:
        self.seed = seed
        names = [n for n, _ in lm.model.named_parameters()]
        unknown = [n for n in names if lm.layer_of(n) is not None and member_of(n) is None]
        if unknown:
            raise ImprintError(f"--method hft: {unknown[0]} is in no category (attention q/k/v/o, MLP gate/up/down, "
                               "norms); HFT needs a Llama-like block")
        params = super().prepare(lm, seed)
        self.begin_step(lm, 0)
        return params

    def set_run_length(self, steps: int) -> None:
        self.steps = steps

    def stage_of(self, step: int) -> int:
        return min(step * self.settings.hft_stages // max(self.steps, 1), self.settings.hft_stages - 1)

    def begin_step(self, lm, step: int) -> None:
        stage = self.stage_of(step)
        if stage == self.stage:
            return
        self.stage = stage
        halves = [self.half_of(lm, stage)]
        for name, p in lm.model.named_parameters():
            p.requires_grad_(self.trains(lm, name, halves))

    def half_of(self, lm, stage: int) -> list[set[str]]:
        """The stage's trained half of each block: drawn from the seed and the stage alone, so a resumed
        run and the parameter count see the same halves."""
        return draw_half(lm.num_layers, step_generator(self.seed, HFT_STREAM, stage))

    def trains(self, lm, name: str, halves: list[list[set[str]]]) -> bool:
        """Whether the parameter trains in one of the stages whose halves are given."""
        layer = lm.layer_of(name)
        if layer is None:
            return self.settings.hft_outside_blocks == "train"
        return any(member_of(name) in half[layer] for half in halves)

    def trainable_names(self, lm) -> list[str]:
        return [name for name, _ in lm.model.named_parameters()]  # every weight: the half changes with the stage

    def trainable_parameter_count(self, lm) -> int:
        """The parameters some stage of the run trains (one stage: the outside and half of the blocks)."""
        halves = [self.half_of(lm, stage) for stage in range(self.settings.hft_stages)]
        return sum(p.numel() for name, p in lm.model.named_parameters() if self.trains(lm, name, halves))
