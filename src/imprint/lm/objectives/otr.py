"""`--objective otr`: One-Token Rollout (arXiv 2509.26313).

Taken from the paper (its abstract, and its equations as the ICLR 2026 reviews quote them; the
method sections and any code were not reachable): each answer position t is a one-step episode.
K tokens a_1..a_K are drawn from the policy at a temperature tau > 1 (more exploration); a drawn
token earns reward 1 if it is the gold token x_t and beta (slightly negative) otherwise; the
reward carries no gradient; the loss is the policy gradient's
    L_t = -(1/K) sum_k R(a_k, x_t) log pi(a_k | s_t),
log pi at temperature 1 (the draws come from the tempered copy, with no importance correction),
averaged over the answer tokens. The gold token is not added to the draws: it enters only when
drawn. K = 256, as the paper's experiments.

Chosen here (the paper's values were not reachable; each is a setting): tau 1.2 and beta -0.1.
OTR replaces the cross-entropy; `answer_loss` is still logged beside it, for comparison with SFT.
The draws come from the micro-batch's seeded stream, so a resumed run draws as the unbroken one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imprint.lm.objectives.base import LMObjective, answer_positions, register_objective
from imprint.util.settings import setting


@dataclass
class OTRSettings:
    otr_samples: int = setting(256, "K: tokens drawn from the policy at each answer position (the paper's 256)",
                               positive=True)
    otr_temperature: float = setting(1.2, "tau: the temperature of the draws (the paper: above 1)", positive=True)
    otr_penalty: float = setting(-0.1, "beta: the reward of a drawn token that is not the gold one (the paper: "
                                 "slightly negative)")


def otr_loss_sum(logits: torch.Tensor, targets: torch.Tensor, samples: int, temperature: float, penalty: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Sum over positions of -(1/K) sum_k R(a_k) log pi(a_k), a_k drawn from softmax(logits / tau)."""
    with torch.no_grad():
        tempered = torch.softmax(logits.detach().float() / temperature, dim=-1).cpu()
        drawn = torch.multinomial(tempered, samples, replacement=True, generator=generator).to(logits.device)
        rewards = torch.where(drawn == targets[:, None], 1.0, penalty)
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, drawn)
    return -(rewards * log_probs).mean(dim=1).sum()


@register_objective
class OTR(LMObjective):
    name = "otr"
    summary = "One-Token Rollout: a one-step policy gradient at each answer token, the gold token the reward"
    Settings = OTRSettings

    def loss_sum(self, model, batch, step, generator):
        s = self.settings
        logits, targets = answer_positions(model, batch)
        total = otr_loss_sum(logits, targets, s.otr_samples, s.otr_temperature, s.otr_penalty, generator)
        tokens = int(targets.numel())
        with torch.no_grad():
            cross_entropy = F.cross_entropy(logits.detach(), targets, reduction="sum").item()
        return total, tokens, {"otr_loss": total.item() / max(tokens, 1), "answer_loss": cross_entropy / max(tokens, 1)}
