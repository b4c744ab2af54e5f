"""`--objective s3ft`: Selective Self-to-Supervised Fine-Tuning (Gupta et al., NAACL Findings 2025,
arXiv 2502.08130).

Taken from the paper (its Figure 1 and Table 3, as quoted; the body was not reachable and there
is no public code): before training, the base model answers every training prompt; a judge
decides whether its answer is equivalent to the gold one; where it is, the model is trained on its
own answer (the text it already finds likely, so fitting it moves the model less). Where it is
not, the base model is shown the prompt with the gold answer and asked to answer in its own words;
the judge checks that paraphrase too, and it is the target where it passes, the gold answer
otherwise. The loss is the ordinary answer cross-entropy. The shares of the three kinds of target
are reported (the paper's Table 3).

Chosen here:
- The answers are greedy, at most --s3ft-max-new-tokens tokens, with the run's system prompt.
- The paraphrase request is imprint's own wording (PARAPHRASE below; the paper shows its prompts
  only as figures); --no-s3ft-paraphrase leaves the step out (the issue's two-way version).
- The judge: by default the rule each record already carries for evaluation (`answer` and `match`,
  lm/answers.py: exact, normalised contains, final number, regex), so the shipped tasks need no
  judge of their own; or --s3ft-judge FILE.py:FUNCTION, called as FUNCTION(prompt, prediction, gold)
  -> bool (prompt: the last user message; gold: the record's answer text).
- Only the last assistant turn of a record is replaced.
- The answers and the judge's verdicts are kept in the run folder (s3ft.jsonl) and read back on a
  resume; the share of own answers goes into metadata.json and the log.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from imprint.lm.answers import is_correct
from imprint.lm.data import Record
from imprint.lm.objectives.base import LMObjective, keep, read_kept, register_objective
from imprint.util.errors import ImprintError
from imprint.util.settings import setting

log = logging.getLogger("imprint")

ANSWERS_FILE = "s3ft.jsonl"
PARAPHRASE = ("{question}\n\nA correct answer to this is:\n{answer}\n\nWrite your own answer to the question, in your "
              "own words, reaching the same final answer. Give only the answer.")
OWN, REWORDED, GOLD = "own", "paraphrase", "gold"


@dataclass
class S3FTSettings:
    s3ft_judge: str | None = setting(None, "FILE.py:FUNCTION deciding whether the model's answer is equivalent to the "
                                     "gold one, called as FUNCTION(prompt, prediction, gold) -> bool",
                                     shown_default="each record's answer/match rule")
    s3ft_max_new_tokens: int = setting(128, "longest answer the base model gives to a training prompt",
                                       positive=True)
    s3ft_paraphrase: bool = setting(True, "where the model's answer is wrong, train on its paraphrase of the gold "
                                    "answer if the judge accepts it (the paper's second step)")

    def resolve(self) -> None:
        if self.s3ft_judge is not None:
            load_judge(self.s3ft_judge)  # a bad path or name fails before any model loads


Judge = Callable[[str, str, str], bool]


def load_judge(spec: str) -> Judge:
    """FILE.py:FUNCTION, imported from the file (the user's own code, named by the user's flag)."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise ImprintError(f"--s3ft-judge {spec}: write it as FILE.py:FUNCTION")
    if not Path(path).is_file():
        raise ImprintError(f"--s3ft-judge {spec}: {path} not found")
    module_spec = importlib.util.spec_from_file_location("imprint_s3ft_judge", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: any error in it is reported as theirs
        raise ImprintError(f"--s3ft-judge {spec}: importing {path} failed: {type(e).__name__}: {e}") from e
    judge = getattr(module, name, None)
    if not callable(judge):
        raise ImprintError(f"--s3ft-judge {spec}: {path} has no function {name}")
    return judge


def record_judge(record: Record, prediction: str) -> bool:
    """The record's own check, as evaluation applies it."""
    return is_correct(prediction, record.answer, record.match)


def last_user_message(record: Record) -> str:
    return next((m["content"] for m in reversed(record.prompt_messages) if m["role"] == "user"), "")


def judged(records: list[Record], predictions: list[str], judge: Judge | None) -> list[bool]:
    """Whether each prediction is equivalent to its record's gold answer (an empty one never is)."""
    out = []
    for record, prediction in zip(records, predictions):
        if not prediction.strip():
            out.append(False)
        elif judge is None:
            out.append(record_judge(record, prediction))
        else:
            out.append(bool(judge(last_user_message(record), prediction, record.messages[-1]["content"])))
    return out


def paraphrase_request(record: Record) -> list[dict]:
    """The conversation asking the model to answer in its own words, shown the gold answer."""
    asked = PARAPHRASE.format(question=last_user_message(record), answer=record.messages[-1]["content"])
    return [*[m for m in record.prompt_messages if m["role"] == "system"], {"role": "user", "content": asked}]


def select_targets(records: list[Record], predictions: list[str], judge: Judge | None,
                   paraphrases: list[str | None] | None = None,
                   own: list[bool] | None = None) -> tuple[list[Record], list[str]]:
    """S3FT's training records: each record's last answer replaced by the model's own prediction where
    the judge says it is equivalent to the gold one, else by the model's paraphrase of the gold answer
    where the judge accepts that, else kept; and which of own / paraphrase / gold each is. `own`: the
    judge's verdicts on the predictions, where already known."""
    own = judged(records, predictions, judge) if own is None else own
    paraphrases = paraphrases or [None] * len(records)
    reworded = judged(records, [p or "" for p in paraphrases], judge)
    out, kinds = [], []
    for record, prediction, paraphrase, is_own, is_reworded in zip(records, predictions, paraphrases, own, reworded):
        kind, text = (OWN, prediction) if is_own else (REWORDED, paraphrase) if is_reworded else (GOLD, None)
        if text is not None:
            record = replace(record, messages=[*record.prompt_messages, {"role": "assistant", "content": text}])
        out.append(record)
        kinds.append(kind)
    return out, kinds


@register_objective
class S3FT(LMObjective):
    name = "s3ft"
    summary = ("S3FT: train on the base model's own answer (or its paraphrase of the gold one) where a judge "
               "finds it equivalent to the gold answer")
    Settings = S3FTSettings

    def __init__(self, settings=None):
        super().__init__(settings)
        self.answers: list[dict] | None = None

    def prepare_records(self, records: list[Record], lm, cfg, run_path: Path) -> list[Record]:
        judge = load_judge(self.settings.s3ft_judge) if self.settings.s3ft_judge else None
        saved, own = read_kept(run_path / ANSWERS_FILE, records), None
        if saved:  # a resume: the answers the run started with
            predictions, paraphrases = [s["prediction"] for s in saved], [s.get("paraphrase") for s in saved]
        else:
            from imprint.lm.evaluate import generate_answers

            n, system, longest = len(records), cfg.data.system_prompt, self.settings.s3ft_max_new_tokens
            log.info("s3ft: the base model answers %d training prompts", n)
            predictions = generate_answers(lm, [r.prompt_messages for r in records], longest, system)
            paraphrases = [None] * n
            if self.settings.s3ft_paraphrase:
                own = judged(records, predictions, judge)  # once: a user's judge may be slow
                wrong = [i for i, ok in enumerate(own) if not ok]
                log.info("s3ft: the base model paraphrases %d gold answers", len(wrong))
                for i, text in zip(wrong, generate_answers(lm, [paraphrase_request(records[i]) for i in wrong],
                                                           longest, system)):
                    paraphrases[i] = text
        selected, kinds = select_targets(records, predictions, judge, paraphrases, own)
        self.answers = [{"line": r.line, "target": k, "prediction": p, "paraphrase": q}
                        for r, k, p, q in zip(records, kinds, predictions, paraphrases)]
        log.info("s3ft targets: %s", ", ".join(f"{k} {kinds.count(k)}" for k in (OWN, REWORDED, GOLD)))
        return selected

    def setup(self, task, run) -> None:
        if self.answers is not None:
            keep(run.path / ANSWERS_FILE, self.answers)

    def metadata(self) -> dict:
        kinds = [a["target"] for a in self.answers or []]
        return {**super().metadata(), "s3ft_targets": {k: kinds.count(k) for k in (OWN, REWORDED, GOLD)},
                "s3ft_own_share": kinds.count(OWN) / max(len(kinds), 1)}
