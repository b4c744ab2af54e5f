"""`--objective masked-thought`: Masked Thought (Chen et al., ACL 2024, arXiv 2403.02178).

Taken from the paper and the authors' code (ChangyuChen347/MaskedThought: the mask policy in
models/mask_policy_utils.py, the schedule in trainer/Trainer/trainer_436.py):
- only answer tokens are masked (the prompt never is), each independently with probability p
  (the authors draw a Binomial(n, p) count of positions, the same distribution);
- a masked position's *input* is replaced; its label stays the original token, and the loss is
  the ordinary cross-entropy of the answer tokens (so later tokens must be predicted from a
  reasoning chain with holes in it);
- p ramps linearly from 0 to its maximum over the first 66% of the steps, then stays:
  p = min(max, max * step / (steps * 0.66 + 1)); the maximum is 0.4 for GSM8K (the default here)
  and 0.2 for MATH.

Chosen here: the replacement is the tokenizer's pad token by default (the README's "[pad]" option;
the authors' own `<mask>` token would add an embedding row that an adapter method cannot train), or
`random`: a uniformly drawn vocabulary id, as the authors' GSM8K script does (`--replace`).
The draws come from the micro-batch's seeded stream, so a resumed run masks as the unbroken one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imprint.lm.data import IGNORE
from imprint.lm.objectives.base import LMObjective, answer_loss_sum, register_objective
from imprint.util.errors import ImprintError
from imprint.util.settings import setting


@dataclass
class MaskedThoughtSettings:
    mask_rate: float = setting(0.4, "the highest share of answer tokens masked (the paper's 0.4 for GSM8K, "
                               "0.2 for MATH)", non_negative=True)
    mask_warmup: float = setting(0.66, "share of the steps over which the mask rate ramps up from 0 (the "
                                 "authors' 0.66)", non_negative=True)
    mask_with: str = setting("pad", "what replaces a masked input token: the pad token, or a random vocabulary id "
                             "(the authors' GSM8K script)", choices=("pad", "random"))

    def resolve(self) -> None:
        if self.mask_rate > 1:
            raise ImprintError(f"--mask-rate {self.mask_rate:g}: a share of the answer tokens, at most 1")


def mask_rate(step: int, steps: int, highest: float, warmup: float) -> float:
    """The authors' schedule: linear from 0 to `highest` over the first `warmup` share of the steps."""
    return min(highest, highest * step / (steps * warmup + 1))


def mask_answers(batch: dict[str, torch.Tensor], rate: float, replacement: str, pad_id: int, vocab: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The batch with each answer token's input replaced with probability `rate`; labels unchanged."""
    ids = batch["input_ids"]
    answers = batch["labels"] != IGNORE
    chosen = (torch.rand(ids.shape, generator=generator) < rate).to(ids.device) & answers
    if replacement == "random":
        fill = torch.randint(0, vocab, ids.shape, generator=generator).to(ids.device)
    else:
        fill = torch.full_like(ids, pad_id)
    return {**batch, "input_ids": torch.where(chosen, fill, ids)}


@register_objective
class MaskedThought(LMObjective):
    name = "masked-thought"
    summary = "Masked Thought: answer tokens' inputs masked at a rate that ramps up, labels unchanged"
    Settings = MaskedThoughtSettings

    def __init__(self, settings=None):
        super().__init__(settings)
        self.pad_id, self.vocab = 0, 1

    def setup(self, task, run) -> None:
        self.pad_id = task.lm.tokenizer.pad_token_id
        self.vocab = task.lm.model.get_input_embeddings().num_embeddings

    def loss_sum(self, model, batch, step, generator):
        s = self.settings
        rate = mask_rate(step, self.steps, s.mask_rate, s.mask_warmup)
        total, tokens = answer_loss_sum(model, mask_answers(batch, rate, s.mask_with, self.pad_id, self.vocab,
                                                            generator))
        return total, tokens, {"answer_loss": total.item() / max(tokens, 1), "mask_rate": rate}
