"""`--objective spin`: Self-Play Fine-Tuning (Chen et al., ICML 2024, arXiv 2401.01335).

Taken from the paper and the authors' code (uclaml/SPIN: spin/alignment/trainer.py, spin/generate*.py,
the iteration configs): iteration t trains on SFT data (x, y). The model of the previous iteration,
p_t, answers every prompt (y' ~ p_t); the loss is the DPO form with the human answer as the winner,
    -log sigmoid(lambda * [log p(y|x)/p_t(y|x) - log p(y'|x)/p_t(y'|x)]),
log-probabilities summed over the answer tokens, lambda (beta) 0.1 for the first iterations; the
model starts from p_t and p_t is the reference. From iteration 1 on, the pairs generated in the
previous iteration are trained on beside the new ones (the paper's section 6.1: the most recent
iteration's synthetic data is added to the newly generated data).

Chosen here:
- One iteration is one run: `imprint lm train --objective spin` (iteration 0 starts from --model),
  then `--init-from` the previous iteration's run folder for the next; `imprint lm spin` runs T
  iterations that way, each into its own run folder. The reference log-probabilities come from the
  model as the run starts, as DPO's (lm/objectives/dpo.py), which is p_t.
- The answers are sampled at temperature 1.0 (the authors' vLLM script: temperature 1.0, top-p 1.0),
  seeded by --seed, at most --spin-max-new-tokens tokens (the authors' 256), and kept in the run
  folder (spin.jsonl), so a resume and the next iteration read them back.
- The validation loss is the answer cross-entropy of the held-out human answers (SPIN's aim is to
  fit them), not the DPO loss, which would need generated answers for the held-out prompts too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from imprint.lm.data import Example, Record, collate
from imprint.lm.objectives.base import LMObjective, keep, read_kept, register_objective
from imprint.lm.objectives.dpo import DPO
from imprint.util.settings import setting

log = logging.getLogger("imprint")

GENERATED_FILE = "spin.jsonl"


@dataclass
class SPINSettings:
    spin_beta: float = setting(0.1, "lambda: the DPO-form loss's scale (the paper's 0.1)", positive=True)
    spin_max_new_tokens: int = setting(256, "longest answer the previous iterate gives to a training prompt (the "
                                       "authors' 256)", positive=True)
    spin_temperature: float = setting(1.0, "sampling temperature of those answers (the authors' 1.0; 0: greedy)",
                                      non_negative=True)
    spin_mix_previous: bool = setting(True, "also train on the pairs the previous iteration generated (the paper's "
                                      "section 6.1)")


def spin_pairs(records: list[Record], generated: list[str]) -> list[Record]:
    """Preference records: the human answer chosen, the model's own rejected."""
    return [replace(r, rejected=g) for r, g in zip(records, generated)]


@register_objective
class SPIN(DPO):
    name = "spin"
    summary = "SPIN: DPO against the previous iterate's own answers, the human answers winning (one run per iteration)"
    Settings = SPINSettings
    needs_pairs = False  # SFT records: the rejected answers are generated

    def __init__(self, settings=None):
        super().__init__(settings)
        self.generated: list[dict] | None = None
        self.mixed = 0

    @property
    def beta(self) -> float:
        return self.settings.spin_beta

    def prepare_records(self, records: list[Record], lm, cfg, run_path: Path) -> list[Record]:
        saved = read_kept(run_path / GENERATED_FILE, records)
        if saved:  # a resume: the answers the run started with
            answers = [s["generated"] for s in saved]
        else:
            from imprint.lm.evaluate import generate_answers

            log.info("spin: the current model answers %d training prompts", len(records))
            answers = generate_answers(lm, [r.prompt_messages for r in records], self.settings.spin_max_new_tokens,
                                       cfg.data.system_prompt, self.settings.spin_temperature, cfg.trainer.seed)
            answers = [a if a.strip() else " " for a in answers]  # an empty answer still makes a pair
        self.generated = [{"line": r.line, "generated": a} for r, a in zip(records, answers)]
        pairs = spin_pairs(records, answers)
        if cfg.run.init_from and self.settings.spin_mix_previous:
            by_line = {r.line: r for r in records}
            previous = [p for p in read_kept(Path(cfg.run.init_from) / GENERATED_FILE) if p["line"] in by_line]
            pairs += spin_pairs([by_line[p["line"]] for p in previous], [p["generated"] for p in previous])
            self.mixed = len(previous)
            log.info("spin: %d pairs of the previous iteration added", len(previous))
        same = sum(a.strip() == r.messages[-1]["content"].strip() for r, a in zip(records, answers))
        log.info("spin: %d of %d generated answers equal the human one", same, len(records))
        return pairs

    def setup(self, task, run) -> None:
        if self.generated is not None:
            keep(run.path / GENERATED_FILE, self.generated)
        super().setup(task, run)

    def collate(self, examples: list[Example], pad_id: int, padding_free: bool = False) -> dict[str, torch.Tensor]:
        if examples and examples[0].rejected is None:  # the held-out human answers
            return collate(examples, pad_id, padding_free)
        return super().collate(examples, pad_id, padding_free)

    def validation_sum(self, model, batch):
        return LMObjective.validation_sum(self, model, batch)

    def metadata(self) -> dict:
        return {**super().metadata(), "spin_generated": len(self.generated or []), "spin_mixed_previous": self.mixed}
