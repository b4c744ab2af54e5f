"""Loss weighting over the noise level for rectified-flow models (Esser et al. 2024, arXiv
2403.03206, section 3.1): "sigma_sqrt" weights a level's velocity loss by 1 / s^2, "cosmap" by
2 / (pi (1 - 2 s + 2 s^2)), the paper's cosine-map weighting. The formulas are diffusers'
`compute_loss_weighting_for_sd3`, which the SD3 and FLUX scripts use, called as they call it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imprint.objectives.base import Batch, LossTerm, register_term
from imprint.util.errors import ImprintError
from imprint.util.settings import setting


@dataclass
class FlowWeightingSettings:
    loss_weighting: str = setting("none", "SD3 / FLUX: weight of each noise level's loss: none, sigma_sqrt "
                                  "(1 / s^2) or cosmap (the SD3 paper's), as diffusers' scripts offer",
                                  choices=("none", "sigma_sqrt", "cosmap"))


@register_term
class FlowWeighting(LossTerm):
    name = "flow_weighting"
    Settings = FlowWeightingSettings

    def enabled(self) -> bool:
        return self.settings is not None and self.settings.loss_weighting != "none"

    def setup(self, family, fill) -> None:
        if family.prediction_type != "flow":
            raise ImprintError(f"--loss-weighting {self.settings.loss_weighting}: a weighting of flow-matching models "
                               f"(SD3, FLUX); this is a {family.name} model: use --snr-gamma, or drop the flag")

    def weight(self, batch: Batch, family) -> torch.Tensor:
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        weight = compute_loss_weighting_for_sd3(self.settings.loss_weighting, family.sigmas(batch.timesteps))
        return weight.reshape(-1, *([1] * (batch.target.ndim - 1)))
