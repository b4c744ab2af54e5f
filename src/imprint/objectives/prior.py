"""DreamBooth's prior preservation (Ruiz et al. 2023, arXiv 2208.12242): the denoising error
on the class images the frozen model made, weighted by --prior-loss-weight, keeps the class
prior while the subject is learned. Active when the batch has class rows."""

from __future__ import annotations

from dataclasses import dataclass

from imprint.objectives.base import CLASS, LossTerm, TermContext, register_term
from imprint.util.settings import setting


@dataclass
class PriorSettings:
    prior_loss_weight: float = setting(1.0, "weight of the prior-preservation loss (DreamBooth: 1)")


@register_term
class PriorPreservation(LossTerm):
    name = "prior"
    Settings = PriorSettings
    group = "prior"

    def loss(self, ctx: TermContext):
        if not ctx.batch.has(CLASS):
            return None
        rows = ctx.batch.rows(CLASS).to(ctx.row_errors.device)
        return self.settings.prior_loss_weight * ctx.row_errors[rows].mean()
