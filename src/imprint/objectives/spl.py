"""ClassDiffusion's semantic preservation loss (Huang et al., ICLR 2025, arXiv 2405.17532):
keeps the subject's prompt close to its class in the text encoder's output, so that learning
the subject does not drift its prompt away from the class's meaning (and from what the model
can do with the class).

  L_SPL = 1 - cos(E_eos("a photo of a {token} {class_name}"), E_eos("a photo of a {class_name}"))

Taken from the paper and its code (Rbrq03/ClassDiffusion, utils/semantic_preservation_loss.py):
E_eos is the text encoder's pooled output (the EOS token after the final layer norm, CLIP's
`pooler_output`); the two prompts; the weight lambda = 1 (`--spl-weight 1`); the loss is added
to the step's denoising loss once per step (not per row). Chosen here: it is a term any method
switches on where something in the text encoder is trained (the token's embedding with
textual_inversion / pivotal, or the encoder's LoRA with --train-text-encoder), as the paper's
Custom Diffusion trains the new token's embedding; the class prompt's encoding is the base model's,
computed once before training without a gradient (in the paper's code the gradient reaches the
new token's row only, which the class prompt does not hold, so its encoding is constant there;
with a trained text encoder LoRA we keep it the base model's, the meaning to preserve). The paper's code uses SPL in place of the prior-preservation loss;
here the two compose, and the benchmark runs SPL beside the base recipe's prior loss as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imprint.objectives.base import INSTANCE, LossTerm, TermContext, register_term
from imprint.util.settings import setting


@dataclass
class SPLSettings:
    spl_weight: float = setting(0.0, "ClassDiffusion's semantic preservation loss: weight of 1 - cos(EOS "
                                "encodings of --spl-subject-prompt and --spl-class-prompt) (the paper's 1); "
                                "needs a trained token or text encoder; 0: off", non_negative=True)
    spl_subject_prompt: str = setting("a photo of a {token} {class_name}", "the subject's prompt of --spl-weight")
    spl_class_prompt: str = setting("a photo of a {class_name}", "the class prompt of --spl-weight")


def semantic_preservation_loss(subject: torch.Tensor, class_: torch.Tensor) -> torch.Tensor:
    """1 - cos over the last dimension, averaged over rows: (N, D), (N, D) -> scalar."""
    return (1 - F.cosine_similarity(subject.float(), class_.float(), dim=-1)).mean()


@register_term
class SemanticPreservation(LossTerm):
    name = "spl"
    Settings = SPLSettings
    needs_text_encoder = True
    needs_trained_text_encoder = True  # else the loss is a constant: no gradient reaches anything

    def enabled(self) -> bool:
        return self.settings is not None and self.settings.spl_weight > 0

    def setup(self, family, fill) -> None:
        self.subject_prompt = fill(self.settings.spl_subject_prompt)
        # the class prompt as the base model encodes it, before any step (a resumed run computes
        # it before the trained state is loaded, so it is the same number)
        with torch.no_grad():
            self.class_encoding = family.pooled_text_embeddings(
                family.tokenize([fill(self.settings.spl_class_prompt)])).float()

    def loss(self, ctx: TermContext):
        if not ctx.batch.has(INSTANCE):  # once per step: with the subject's rows
            return None
        subject = ctx.pooled_text([self.subject_prompt])
        return self.settings.spl_weight * semantic_preservation_loss(subject, self.class_encoding.to(subject.device))
