"""`--objective dpo`: Direct Preference Optimization (Rafailov et al., NeurIPS 2023, arXiv 2305.18290).

Taken from the paper (its eq. 7): per preference pair (x, y_w, y_l),
    loss = -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])
with log pi(y|x) the sum of the answer tokens' log-probabilities, the mean over pairs; beta 0.1
(the paper's and TRL's default).

Chosen here:
- The reference is the model as the run starts: the base for every method (each starts from a
  zero update), the previous iterate for SPIN. Its log-probabilities are computed once, before
  the first step, for the training and validation pairs, and kept in the run folder
  (reference_logps.safetensors), so a resume reads them and no second model is held in memory
  (TRL's `precompute_ref_log_probs`; TRL's default keeps a reference model or turns adapters off at
  every step instead, with the same result for a fixed reference).
- An answer's tokens are those the chat template gives the assistant turn (its text and the
  end-of-turn), as SFT trains; the same as TRL's completion tokens for a conversational record.
- A step's loss is the mean over all the pairs of its micro-batches; the validation loss is the DPO
  loss of the validation pairs. `dpo_reward_accuracy` logs the share of pairs whose implicit reward
  beta * log(pi / pi_ref) is higher for the chosen answer.
- Padding-free batches are not supported (a pair's log-probability is a per-row sum).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imprint.lm.data import IGNORE, Example, collate
from imprint.lm.objectives.base import LMObjective, answer_positions, register_objective
from imprint.util.errors import ImprintError
from imprint.util.settings import setting

log = logging.getLogger("imprint")

REFERENCE_FILE = "reference_logps.safetensors"


@dataclass
class DPOSettings:
    dpo_beta: float = setting(0.1, "beta: how far from the reference the implicit reward may pull (the paper's 0.1)",
                              positive=True)


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row of a padded batch: the sum of its answer tokens' log-probabilities."""
    logits, targets = answer_positions(model, batch)
    per_token = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
    rows = (batch["labels"][:, 1:] != IGNORE).nonzero()[:, 0]
    return torch.zeros(batch["labels"].shape[0], dtype=per_token.dtype, device=per_token.device).index_add(
        0, rows, per_token)


def dpo_losses(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, from (pairs, 2) log-probabilities of (chosen, rejected): the DPO loss and the
    implicit reward margin beta * (chosen log-ratio - rejected log-ratio)."""
    ratios = policy - reference.to(policy.dtype)
    margin = beta * (ratios[:, 0] - ratios[:, 1])
    return -F.logsigmoid(margin), margin


@register_objective
class DPO(LMObjective):
    name = "dpo"
    summary = "Direct Preference Optimization on {prompt, chosen, rejected} records, the run's start as reference"
    Settings = DPOSettings
    needs_pairs = True

    @property
    def beta(self) -> float:
        return self.settings.dpo_beta

    def units(self, example: Example) -> int:
        return 1

    def length(self, example: Example) -> int:
        return max(len(example.input_ids), len(example.rejected.input_ids))

    def collate(self, examples: list[Example], pad_id: int, padding_free: bool = False) -> dict[str, torch.Tensor]:
        if padding_free:
            raise ImprintError("--padding-free: not supported with --objective dpo; drop the flag")
        batch = collate([*examples, *(e.rejected for e in examples)], pad_id)
        if all(e.reference is not None for e in examples):
            batch["reference_logps"] = torch.tensor([e.reference for e in examples], dtype=torch.float64)
        return batch

    def pair_logps(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(pairs, 2) log-probabilities of the chosen and rejected answers."""
        logps = sequence_logps(model, batch)
        return torch.stack(logps.chunk(2), dim=1)

    def setup(self, task, run) -> None:
        """The reference log-probabilities of every training and validation pair, from the model as
        the method prepared it; read back from the run folder on a resume."""
        from safetensors.torch import load_file

        from imprint.util.files import save_safetensors_atomic

        path = run.path / REFERENCE_FILE
        sets = {key: examples for key, examples in (("train", task.examples), ("validation", task.validation_examples))
                if examples and all(e.rejected is not None for e in examples)}
        if path.is_file():
            saved = load_file(path)
            for key, examples in sets.items():
                if key in saved and len(saved[key]) != len(examples):
                    raise ImprintError(f"{path}: made for {len(saved[key])} {key} pairs, the data has {len(examples)}; "
                                       "resume with the run's own data")
        else:
            saved = {key: self.reference_of(task, examples) for key, examples in sets.items()}
            save_safetensors_atomic(saved, path)
        for key, examples in sets.items():
            for example, pair in zip(examples, saved.get(key, [])):
                example.reference = (float(pair[0]), float(pair[1]))

    @torch.no_grad()
    def reference_of(self, task, examples: list[Example]) -> torch.Tensor:
        model = task.lm.model
        was_training = model.training
        model.eval()
        out = []
        size = task.cfg.data.batch_size
        log.info("dpo: the reference log-probabilities of %d pairs", len(examples))
        for start in range(0, len(examples), size):
            batch = {k: v.to(task.device) for k, v in self.collate(examples[start:start + size],
                                                                   task.lm.tokenizer.pad_token_id).items()}
            with task.accelerator.autocast():
                out.append(self.pair_logps(model, batch).double().cpu())
        model.train(was_training)
        return torch.cat(out)

    def loss_sum(self, model, batch, step, generator):
        losses, margin = dpo_losses(self.pair_logps(model, batch), batch["reference_logps"], self.beta)
        pairs = len(losses)
        return losses.sum(), pairs, {"dpo_loss": losses.sum().item() / pairs,
                                     "dpo_reward_accuracy": (margin > 0).double().mean().item(),
                                     "dpo_reward_margin": margin.mean().item() / self.beta}

    def validation_sum(self, model, batch):
        losses, _ = dpo_losses(self.pair_logps(model, batch), batch["reference_logps"], self.beta)
        return float(losses.sum()), len(losses)
