"""RPO's preference loss (Miao et al., NeurIPS 2024, arXiv 2407.12164): besides the subject's
denoising loss, the model is pushed to improve, relative to the frozen base model, more on the
subject's photos than on the base model's own images for the training prompts.

  Delta = [e_ref(x_w) - e_theta(x_w)] - [e_ref(x_l) - e_theta(x_l)]
  L_pref = -[y log sigmoid(beta Delta) + (1 - y) log sigmoid(-beta Delta)],  y ~ Bernoulli(sigmoid(R(x_w) - R(x_l)))

x_w a subject photo (with its caption), x_l a base-model image of a training prompt (with that
prompt), e the per-row denoising error (mean over elements) of the trained model (theta) and of
the frozen base (ref: adapters off, so an adapter method), R the lambda-harmonic reward of the
image for the negative's prompt. Taken from the paper's code (andrew-miao/RPO train.py,
datasets_utils.py): Delta, the BCE with a label drawn afresh per pair and step, 16 negatives per
training prompt, L = L_sim + L_pref (weight 1), lambda_train 0 (text alignment only), beta 1 (the
SD script has no beta; its SDXL script's default is 1). Chosen here: a subject row and its
negative share noise and timestep (as the SDXL script; the SD script draws them apart); each
subject row gets a negative drawn uniformly from all of them every step (the code, on one GPU,
pairs photo k with image k of prompt k only); the reward's prompt has the identifier removed
(the code's labels keep "[V]"; its validation removes it); the training prompts are the metric
backend's, disjoint from its evaluation prompts. The negatives are made once and cached like
class images (image/preference.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imprint.objectives.base import NEGATIVE, LossTerm, TermContext, register_term
from imprint.util.settings import setting


@dataclass
class PreferenceSettings:
    rpo_weight: float = setting(0.0, "RPO's preference loss against the base model's own images (the paper's 1; "
                                "needs an adapter method, e.g. lora); 0: off", non_negative=True)
    rpo_images_per_prompt: int = setting(16, "negatives per training prompt, made once by the base model "
                                         "(the paper's 16)", positive=True)
    rpo_lambda: float = setting(0.0, "lambda of the reward that draws the labels: 0 text alignment only (the "
                                "paper's code), 1 subject similarity only")
    rpo_beta: float = setting(1.0, "scale of Delta in the preference loss (the paper's 1)", positive=True)
    rpo_inference_steps: int = setting(30, "denoising steps of each negative", positive=True)


def preference_loss(theta_w: torch.Tensor, ref_w: torch.Tensor, theta_l: torch.Tensor, ref_l: torch.Tensor,
                    labels: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Per-pair errors (P,) of the trained and the frozen model on winners and losers, labels
    (P,) in {0, 1} -> the mean binary cross-entropy of sigmoid(beta Delta) against the labels."""
    delta = (ref_w - theta_w) - (ref_l - theta_l)
    return F.binary_cross_entropy_with_logits(beta * delta, labels.to(delta.dtype))


@register_term
class Preference(LossTerm):
    name = "rpo"
    Settings = PreferenceSettings

    def enabled(self) -> bool:
        return self.settings is not None and self.settings.rpo_weight > 0

    def loss(self, ctx: TermContext):
        batch = ctx.batch
        if not batch.has(NEGATIVE):
            return None
        negatives = batch.rows(NEGATIVE).nonzero().flatten()
        winners = batch.extras["preference_pair"][negatives]  # each negative row's subject row
        theta, ref = ctx.row_errors, ctx.reference_row_errors
        labels = batch.extras["preference_label"][negatives].to(theta.device)
        return self.settings.rpo_weight * preference_loss(theta[winners], ref[winners], theta[negatives],
                                                          ref[negatives], labels, self.settings.rpo_beta)
