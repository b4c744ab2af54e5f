"""What a language-model objective is: the loss a micro-batch gives, in units the step averages
over, with whatever it needs prepared before the first step.

`imprint lm train --objective NAME` picks one; every method trains under every objective (the
method says which parameters move, the objective what they move toward). The trainer asks an
objective for:
- `loss_sum(model, batch, step)`: the micro-batch's summed loss and its number of units (answer
  tokens for SFT-like objectives, preference pairs for DPO). The step's loss is the sum over its
  micro-batches divided by their total units: one big batch, however it is accumulated.
- `units(example)`: an example's units, known before its forward (for that division);
- `collate(examples, pad_id, padding_free)`: the batch tensors;
- `prepare_records(records, lm, cfg, run_path)`: the training records, made with the base model
  before the method changes it (S3FT's own answers);
- `setup(task, run)`: once before the first step (DPO's reference log-probabilities);
- `validation_sum(model, batch)`: the validation loss's sum and units.

A new objective is one file that subclasses LMObjective and registers itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from imprint.lm.data import IGNORE, Example, collate
from imprint.util.errors import ImprintError
from imprint.util.files import write_text_atomic

LM_OBJECTIVES: dict[str, type["LMObjective"]] = {}


def register_objective(cls: type["LMObjective"]) -> type["LMObjective"]:
    LM_OBJECTIVES[cls.name] = cls
    return cls


@dataclass
class NoSettings:
    pass


def answer_positions(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the logits that predict each answer token, those tokens): the backbone's last hidden
    states at the positions that predict an answer token, through the output head. The head runs
    on those positions alone, so the vocabulary-wide logits of prompt tokens are never made."""
    backbone = getattr(model, model.base_model_prefix)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    hidden = backbone(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    chosen = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][chosen]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # models that cap their logits (Gemma 2) do it after the head
        logits = torch.tanh(logits / cap) * cap
    return logits, targets[chosen]


def answer_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of the answer tokens' cross-entropy, their number)."""
    logits, targets = answer_positions(model, batch)
    return F.cross_entropy(logits, targets, reduction="sum"), int(targets.numel())


def answer_count(example: Example) -> int:
    """An example's answer tokens: each label after the first that is trained (the first token is
    never predicted)."""
    return sum(label != IGNORE for label in example.labels[1:])


def read_kept(path: Path, records: list | None = None) -> list[dict]:
    """The rows (one per training record, each with its `line`) an objective kept in the run folder,
    [] where there are none; checked against `records` where given (a resume on other data fails)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if records is not None and [r["line"] for r in rows] != [r.line for r in records]:
        raise ImprintError(f"{path}: made for other training records; resume with the run's own --data")
    return rows


def keep(path: Path, rows: list[dict]) -> None:
    """Rows for read_kept, written atomically, once (a resume keeps what the run started with)."""
    if not path.is_file():
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class LMObjective:
    """Supervised fine-tuning: the cross-entropy of the answer tokens (the default objective)."""

    name = "sft"
    summary = "supervised fine-tuning: cross-entropy of the answer tokens"
    Settings: type = NoSettings
    needs_pairs = False  # every record must carry `chosen` and `rejected` (preference data)

    def __init__(self, settings=None):
        self.settings = settings if settings is not None else self.Settings()
        self.steps = 1

    def set_run_length(self, steps: int) -> None:
        """The run's optimizer steps, for an objective whose schedule is a share of the run."""
        self.steps = max(1, steps)

    def prepare_records(self, records: list, lm, cfg, run_path: Path) -> list:
        """The training records the run trains on, made once before tokenizing, with the base model
        as loaded (S3FT's own answers); `run_path` may hold what a resume reuses."""
        return records

    def units(self, example: Example) -> int:
        return answer_count(example)

    def length(self, example: Example) -> int:
        """How long an example is, for length-grouped batches."""
        return len(example.input_ids)

    def collate(self, examples: list[Example], pad_id: int, padding_free: bool = False) -> dict[str, torch.Tensor]:
        return collate(examples, pad_id, padding_free)

    def setup(self, task, run) -> None:
        """Once, after the method prepared the model and before the first step (or the resume)."""

    def loss_sum(self, model, batch: dict[str, torch.Tensor], step: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, int, dict[str, float]]:
        """(the micro-batch's summed loss, its units, numbers to log per unit). `generator` is the
        micro-batch's own seeded stream, for an objective's random draws (resumable)."""
        total, tokens = answer_loss_sum(model, batch)
        return total, tokens, {"answer_loss": total.item() / max(tokens, 1)}

    def validation_sum(self, model, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
        """(the validation loss's sum over the batch, its units): the answer cross-entropy."""
        total, tokens = answer_loss_sum(model, batch)
        return float(total), tokens

    def metadata(self) -> dict:
        """What the run's metadata.json records of the objective."""
        return {"objective": self.name}


register_objective(LMObjective)
