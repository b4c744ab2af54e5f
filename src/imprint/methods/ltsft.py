"""LT-SFT, Lottery-Ticket Sparse Fine-Tuning (Ansell et al., ACL 2022, "Composable Sparse
Fine-Tuning for Cross-Lingual Transfer"): full fine-tuning finds which entries matter; only
those are then trained from the base again, and the result is a sparse delta that adds up.

Taken from the paper and the authors' code (cambridgeltl/composable-sft, src/sft/lt_sft.py,
trainer.py, sft_args.py): phase 1 is full fine-tuning, optionally with an L1 penalty on the
distance to the base, l1 * sum |theta - theta_0| / (number of parameters); the mask is the K
entries of largest |theta_1 - theta_0|, one threshold over every eligible parameter (not per
matrix); phase 2 resets the weights to the base, starts a fresh optimizer and trains the masked
entries alone; K = --ltsft-density (the repository's default proportion, 0.01) of the eligible
parameters; norms are not eligible (the repository's examples pass --freeze_layer_norm).
Chosen: one run of --steps holds both phases, phase 1 the first --ltsft-phase1-share of them;
the learning-rate schedule runs across both; after each phase-2 step the entries outside the
mask are set back to the base, so weight decay cannot move them. --ltsft-phase2-lr-scale (default
1, the repository's one lr for both phases) multiplies the scheduled lr in phase 2: phase 1 is full
fine-tuning and wants full fine-tuning's lr, while phase 2 moves 1% of the entries and wants a
larger step. On SmolLM2 one lr could not serve both: the lr probe that suited phase 2 (3e-3) made
phase 1 diverge (loss 8.8), so the mask it chose was noise (benchmarks/RESULTS.md, issue 17).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from imprint.methods.base import register
from imprint.methods.lm_base import LMMethod
from imprint.methods.sparse_delta import apply_sparse_delta, delta_size, save_sparse_delta, sparse_delta
from imprint.util.errors import ImprintError
from imprint.util.settings import setting

log = logging.getLogger("imprint")

DELTA_FILE = "sparse_delta.safetensors"
MASK_PREFIX = "ltsft_mask/"


@dataclass
class LTSFTSettings:
    ltsft_density: float = setting(0.01, "share of the eligible weights (all but norms) that phase 2 trains")
    ltsft_phase1_share: float = setting(0.5, "share of --steps spent in phase 1 (full fine-tuning that finds "
                                        "the entries)")
    ltsft_phase2_lr_scale: float = setting(1.0, "phase 2's lr as a multiple of the scheduled --lr (1: one lr "
                                           "for both phases, as the authors' code)")
    ltsft_l1: float = setting(0.0, "phase 1's L1 penalty on |theta - theta_0|, per parameter (the repository's "
                              "MLM examples use 0.1)")

    def resolve(self) -> None:
        if not 0 < self.ltsft_density <= 1:
            raise ImprintError(f"--ltsft-density {self.ltsft_density:g}: must be within (0, 1]")
        if not self.ltsft_phase2_lr_scale > 0:
            raise ImprintError(f"--ltsft-phase2-lr-scale {self.ltsft_phase2_lr_scale:g}: must be above 0")
        if not 0 < self.ltsft_phase1_share < 1:
            raise ImprintError(f"--ltsft-phase1-share {self.ltsft_phase1_share:g}: must be within (0, 1)")


def eligible(name: str) -> bool:
    return "norm" not in name


def top_k_mask(tuned: dict[str, torch.Tensor], base: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Boolean masks of the k entries of largest |tuned - base| over all the tensors together.

    Memory: one float32 copy of the changes, in which the k-th largest is selected in place
    (numpy's introselect). The changes of every tensor kept apart, their concatenation and
    torch.topk over it added 3.2 GiB on SmolLM2-135M's shapes, the peak of an LT-SFT run; this adds
    0.51 GiB (benchmarks/ltsft_mask_memory.py)."""
    def change(n: str) -> torch.Tensor:
        return (tuned[n].detach().float().cpu() - base[n].float()).abs()

    total = sum(t.numel() for t in tuned.values())
    k = max(1, min(k, total))
    flat = torch.empty(total, dtype=torch.float32)
    offset = 0
    for n, t in tuned.items():
        flat[offset:offset + t.numel()] = change(n).flatten()
        offset += t.numel()
    values = flat.numpy()
    values.partition(total - k)  # in place: the k largest now sit from total - k on
    threshold = float(values[total - k])
    del flat, values
    masks = {n: change(n) >= threshold for n in tuned}
    surplus = sum(int(m.sum()) for m in masks.values()) - k
    for n in masks:  # ties at the threshold: drop the surplus, first come first dropped
        if surplus <= 0:
            break
        at = ((change(n) == threshold) & masks[n]).flatten().nonzero().flatten()[:surplus]
        masks[n].view(-1)[at] = False
        surplus -= at.numel()
    return masks


@register
class LTSFT(LMMethod):
    name = "ltsft"
    summary = "full fine-tuning picks the most-changed entries, which are retrained alone from the base (LT-SFT)"
    Settings = LTSFTSettings
    default_lr = 1e-5
    trains_base_weights = True

    def __init__(self, settings=None):
        super().__init__(settings)
        self.masks: dict[str, torch.Tensor] | None = None
        self.phase1_steps, self.optimizer = 1, None

    def set_run_length(self, steps: int) -> None:
        self.phase1_steps = max(1, round(steps * self.settings.ltsft_phase1_share))

    def prepare(self, lm, seed: int) -> list[torch.nn.Parameter]:
        self.params = {n: p for n, p in lm.model.named_parameters() if eligible(n)}
        for p in self.params.values():
            p.requires_grad_(True)
        self.base = {n: p.detach().cpu().clone() for n, p in self.params.items()}
        return list(self.params.values())

    def attach_optimizer(self, optimizer) -> None:
        self.optimizer = optimizer  # kept: phase 2 starts it afresh

    def regularization(self, lm) -> torch.Tensor | None:
        if self.masks is not None or not self.settings.ltsft_l1:
            return None
        total = sum((p - self.base[n].to(p.device)).abs().sum() for n, p in self.params.items())
        return self.settings.ltsft_l1 * total / sum(p.numel() for p in self.params.values())

    @torch.no_grad()
    def begin_step(self, lm, step: int) -> None:
        if step < self.phase1_steps or self.masks is not None:
            return
        eligible_count = sum(p.numel() for p in self.params.values())
        k = round(self.settings.ltsft_density * eligible_count)
        self.masks = top_k_mask(self.params, self.base, k)
        for n, p in self.params.items():
            p.copy_(self.base[n].to(p.device))
        if self.optimizer is not None:
            self.optimizer.state.clear()
        log.info("LT-SFT phase 2 from step %d: %d entries of %d retrained from the base", step, k, eligible_count)

    def before_optimizer_step(self, lm, step: int) -> None:
        """Phase 2's lr: the scheduler sets each group's lr afresh from its base lr at every step (the
        diffusers schedules are LambdaLRs), so scaling it here, once per step, holds for this step only
        and survives a resume."""
        if self.masks is None or self.optimizer is None or self.settings.ltsft_phase2_lr_scale == 1.0:
            return
        for group in self.optimizer.param_groups:
            group["lr"] *= self.settings.ltsft_phase2_lr_scale

    @torch.no_grad()
    def after_optimizer_step(self, lm, step: int) -> None:
        if self.masks is None:
            return
        for n, p in self.params.items():
            p.copy_(torch.where(self.masks[n].to(p.device), p, self.base[n].to(p.device)))

    def trainable_state_dict(self, lm) -> dict[str, torch.Tensor]:
        state = {n: p.detach().float().cpu().contiguous() for n, p in self.params.items()}
        if self.masks is not None:
            state.update({MASK_PREFIX + n: m.to(torch.uint8) for n, m in self.masks.items()})
        return state

    def load_trainable_state_dict(self, lm, state: dict[str, torch.Tensor]) -> None:
        masks = {k[len(MASK_PREFIX):]: v.bool() for k, v in state.items() if k.startswith(MASK_PREFIX)}
        self.masks = masks or None
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n].to(p.dtype))

    def trainable_parameter_count(self, lm) -> int:
        return round(self.settings.ltsft_density * sum(p.numel() for p in self.params.values()))

    def save_result(self, lm, folder: Path) -> list[str]:
        if self.masks is None:
            raise ImprintError("--method ltsft: the run ended in phase 1; give it more --steps")
        delta = sparse_delta(self.params, self.base)
        save_sparse_delta(delta, Path(folder) / DELTA_FILE, {"base_model": lm.name})
        log.info("LT-SFT delta: %d entries", delta_size(delta))
        return [DELTA_FILE]

    @classmethod
    def apply_result(cls, lm, folder: Path, metadata: dict) -> None:
        apply_sparse_delta(lm.model, cls.result_path(folder, DELTA_FILE))
