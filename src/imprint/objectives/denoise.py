"""The denoising term: the mean squared error between the model's prediction and the
family's target over the subject's rows, with whatever per-element weights the other terms
give (SNR weighting, masks)."""

from __future__ import annotations

from imprint.objectives.base import INSTANCE, LossTerm, TermContext, register_term


@register_term
class Denoise(LossTerm):
    name = "denoise"

    def loss(self, ctx: TermContext):
        if not ctx.batch.has(INSTANCE):  # the class rows of a step, batched apart (buckets)
            return None
        rows = ctx.batch.rows(INSTANCE)
        return ctx.row_errors[rows.to(ctx.row_errors.device)].mean()
