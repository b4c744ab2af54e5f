"""The masked denoising loss: with subject masks (--masks or --auto-masks), background pixels
of the subject's rows weigh --mask-loss-weight in the denoising error (0: the subject only, as
HiFi Tuner's mask guidance and Custom Diffusion's masked loss), the subject's pixels 1. Each
row's weights are divided by their mean, so a row's loss is the weighted mean of its errors,
Custom Diffusion's sum(mask * error) / sum(mask), and does not shrink with the subject's size.
Class rows have no mask (weight 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imprint.objectives.base import Batch, LossTerm, register_term
from imprint.util.settings import setting


@dataclass
class MaskLossSettings:
    mask_loss_weight: float = setting(1.0, "with --masks or --auto-masks: the loss weight of background "
                                      "pixels against the subject's 1 (0: the subject only); 1: masks "
                                      "do not change the loss", non_negative=True)


def mask_weight(masks: torch.Tensor, background_weight: float) -> torch.Tensor:
    """(B, 1, h, w) subject shares in [0, 1] -> per-element weights, mean 1 over each row."""
    weight = masks + background_weight * (1 - masks)
    return weight / weight.mean(dim=tuple(range(1, weight.ndim)), keepdim=True).clamp(min=1e-8)


@register_term
class MaskedLoss(LossTerm):
    name = "mask"
    Settings = MaskLossSettings

    def enabled(self) -> bool:
        return self.settings is not None and self.settings.mask_loss_weight != 1

    def weight(self, batch: Batch, family) -> torch.Tensor:
        if batch.masks is None:  # validated: the weight needs masks
            raise RuntimeError("--mask-loss-weight is set but the batch has no masks")
        return mask_weight(batch.masks.float(), self.settings.mask_loss_weight)
