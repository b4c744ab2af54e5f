"""Min-SNR-gamma weighting (Hang et al. 2023, arXiv 2303.09556): each timestep's loss is
weighted by min(SNR(t), gamma) / SNR(t) for an epsilon target, so the low-noise steps, whose
loss is small but whose gradients conflict with the others, stop dominating. For a v target
the paper's weight is min(SNR, gamma) / (SNR + 1). Taken from the paper: the two formulas and
gamma = 5. Chosen: `snr_plus_one`, an alternative for v that caps the x0 weight SNR + 1 at gamma
instead (kept for the toy world's recipe comparison); a zero SNR (the last step of a
zero-terminal-SNR schedule) gets weight 1 with an epsilon target, where the formula is 0/0."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imprint.objectives.base import Batch, LossTerm, register_term
from imprint.util.errors import ImprintError
from imprint.util.settings import setting


@dataclass
class SNRSettings:
    snr_gamma: float = setting(0.0, "min-SNR-gamma loss weighting (Hang et al. 2023; the paper's 5); 0: off")
    snr_weighting: str = setting("min_snr", "with a v-prediction target: min_snr, the paper's "
                                 "min(snr, gamma) / (snr + 1), or snr_plus_one, min(snr + 1, gamma) / (snr + 1)",
                                 choices=("min_snr", "snr_plus_one"))


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str, variant: str = "min_snr") -> torch.Tensor:
    if prediction_type == "v_prediction":
        if variant == "snr_plus_one":
            return torch.clamp(snr + 1, max=gamma) / (snr + 1)
        return torch.clamp(snr, max=gamma) / (snr + 1)
    return torch.where(snr > 0, torch.clamp(snr, max=gamma) / snr.clamp(min=1e-20), torch.ones_like(snr))


@register_term
class MinSNR(LossTerm):
    name = "snr"
    Settings = SNRSettings

    def enabled(self) -> bool:
        return self.settings is not None and self.settings.snr_gamma > 0

    def setup(self, family, fill) -> None:
        if family.prediction_type == "flow":
            raise ImprintError("--snr-gamma: min-SNR weighting is defined for epsilon and v targets; a flow-matching "
                               "model (SD3, FLUX) has --loss-weighting sigma_sqrt / cosmap instead")

    def weight(self, batch: Batch, family) -> torch.Tensor:
        weight = min_snr_weight(family.snr(batch.timesteps), self.settings.snr_gamma, family.prediction_type,
                                self.settings.snr_weighting)
        return weight.reshape(-1, *([1] * (batch.target.ndim - 1)))
