"""Teaching a causal LM a task on the trainer core: JSONL examples in, a method's result files,
validation losses and (by default) the forgetting evaluation out.

The method says which parameters train, the objective (lm/objectives, SFT by default) what the
loss is. SFT's is the cross-entropy of the answer tokens only; the head runs on those positions
alone (not on every position, as a model's own `labels=` loss does), so the vocabulary-wide
logits of prompt tokens are never made. With gradient accumulation a step's loss is the sum over
its micro-batches' units (answer tokens; DPO's pairs) divided by their total count: the same as
one big batch (the per-micro-batch mean many trainers take weights short answers up).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

import imprint
from imprint.config import check_resume_settings
from imprint.core.loop import Callback, Task, check_can_run, fit
from imprint.core.precision import DTYPES, make_accelerator
from imprint.core.run_folder import RunFolder
from imprint.families.causal_lm import CausalLM
from imprint.lm.data import BatchPlan, read_jsonl, split_validation, tokenize_all, write_jsonl
from imprint.lm.objectives import LM_OBJECTIVES
from imprint.lm.settings import RESUMABLE_CHANGES, LMRunConfig, build_config
from imprint.methods import LM_METHODS
from imprint.util.errors import ImprintError
from imprint.util.files import write_json_atomic
from imprint.util.rng import step_generator

log = logging.getLogger("imprint")

DROPOUT_STREAM = 12  # the global generator is seeded from (seed, stream, micro-batch) for dropout
OBJECTIVE_STREAM = 13  # an objective's own draws (masks, rollouts), per micro-batch


class LMTask(Task):
    name = "lm"

    def __init__(self, cfg: LMRunConfig, accelerator, lm: CausalLM, train_examples, method, objective=None,
                 validation_examples=()):
        self.cfg, self.accelerator, self.lm, self.method = cfg, accelerator, lm, method
        self.objective = objective if objective is not None else LM_OBJECTIVES["sft"]()
        self.examples, self.validation_examples = train_examples, list(validation_examples)
        self.units = [self.objective.units(e) for e in train_examples]
        self.device = accelerator.device
        accumulate = cfg.trainer.gradient_accumulation_steps
        self.accumulate = accumulate
        self.plan = BatchPlan([self.objective.length(e) for e in train_examples], cfg.data.batch_size,
                              cfg.trainer.seed, cfg.data.group_by_length)
        method.set_run_length(cfg.trainer.steps)
        self.objective.set_run_length(cfg.trainer.steps)
        method.set_epoch_length(self.plan.per_epoch, accumulate)
        self.params = method.prepare(lm, cfg.trainer.seed)
        if cfg.data.gradient_checkpointing:
            lm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            lm.model.enable_input_require_grads()
        lm.model.train()

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        indices = self.plan(step * self.accumulate + micro)
        return self.objective.collate([self.examples[i] for i in indices], self.lm.tokenizer.pad_token_id,
                                      self.cfg.data.padding_free)

    def step_units(self, step: int) -> int:
        """The units (answer tokens, or pairs) of all the step's micro-batches."""
        return sum(self.units[i] for m in range(self.accumulate) for i in self.plan(step * self.accumulate + m))

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.params

    def loss(self, step: int, micro: int):
        if micro == 0:
            self.method.begin_step(self.lm, step)
            self.units_this_step = self.step_units(step) if self.accumulate > 1 else None
        seed = self.cfg.trainer.seed
        number = step * self.accumulate + micro
        torch.manual_seed((seed * 1_000_003 + DROPOUT_STREAM * 7_919 + number) % 2**63)
        batch = {k: v.to(self.device) for k, v in self.batch(step, micro).items()}
        with self.accelerator.autocast():
            total, units, parts = self.objective.loss_sum(self.lm.model, batch, step,
                                                          step_generator(seed, OBJECTIVE_STREAM, number))
        # per micro-batch: its share of the step's mean over units (the core divides by accumulate)
        normaliser = units if self.units_this_step is None else self.units_this_step / self.accumulate
        loss = total / max(normaliser, 1)
        self.method.observe_loss(step, micro, total.item() / max(units, 1))
        regularization = self.method.regularization(self.lm)
        if regularization is not None:
            parts[f"{self.method.name}_regularization"] = regularization.item()
            loss = loss + regularization
        return loss, parts

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.method.trainable_state_dict(self.lm)

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.method.load_trainable_state_dict(self.lm, state)

    def parameter_groups(self) -> list[dict]:
        return self.method.parameter_groups(self.params)

    def make_optimizer(self, settings):
        optimizer = self.method.make_optimizer(self.params, settings) or super().make_optimizer(settings)
        self.method.attach_optimizer(optimizer)
        return optimizer

    def before_optimizer_step(self, step: int) -> None:
        self.method.before_optimizer_step(self.lm, step)

    def after_optimizer_step(self, step: int) -> None:
        self.method.after_optimizer_step(self.lm, step)


class MethodStop(Callback):
    """A method's own early stop (LocFT-BF's, on the epoch's mean loss); records where it stopped."""

    def __init__(self, method):
        self.method, self.stopped_at = method, None

    def should_stop(self, step: int) -> bool:
        if self.method.should_stop(step):
            self.stopped_at = step
            return True
        return False


@torch.no_grad()
def mean_validation_loss(objective, model, examples, pad_id: int, batch_size: int, device, autocast=None,
                         padding_free: bool = False) -> float:
    """The objective's validation loss over `examples`, the mean over their units (SFT: the token
    mean of the answer cross-entropy)."""
    was_training = model.training
    model.eval()
    total, units = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = objective.collate(examples[start:start + batch_size], pad_id, padding_free)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            value, n = objective.validation_sum(model, batch)
        total, units = total + value, units + n
    model.train(was_training)
    return total / max(units, 1)


class Validation(Callback):
    """The validation loss every --eval-every steps (or at each checkpoint) and at the end, into
    RUN/validation.json (kept across a resume)."""

    def __init__(self, task: LMTask, run: RunFolder):
        self.task, self.run, self.examples = task, run, task.validation_examples
        self.losses: dict[int, float] = {}

    @property
    def path(self) -> Path:
        return self.run.path / "validation.json"

    def measure(self, step: int) -> None:
        if not self.examples:
            return
        task = self.task
        value = mean_validation_loss(task.objective, task.lm.model, self.examples, task.lm.tokenizer.pad_token_id,
                                     task.cfg.data.batch_size, task.device, task.accelerator.autocast,
                                     task.cfg.data.padding_free)
        self.losses[step] = value
        log.info("step %d: validation loss %.4f", step, value)
        write_json_atomic(self.path, {"validation_loss": {str(k): v for k, v in sorted(self.losses.items())}})

    def on_resume(self, step: int) -> None:
        if self.path.exists():
            saved = json.loads(self.path.read_text())["validation_loss"]
            self.losses = {int(k): v for k, v in saved.items() if int(k) <= step}

    def on_step_end(self, step: int) -> None:
        every = self.task.cfg.evaluation.eval_every
        if every and step % every == 0 and step < self.task.cfg.trainer.steps:
            self.measure(step)

    def on_checkpoint(self, step: int) -> set[int]:
        if not self.task.cfg.evaluation.eval_every:
            self.measure(step)
        return set()

    def on_train_end(self, step: int) -> None:
        if step not in self.losses:
            self.measure(step)


def load_records(cfg: LMRunConfig):
    """(training records, validation records), checked before any model loads."""
    records = read_jsonl(cfg.run.data, "--data")
    if cfg.data.validation_data:
        return records, read_jsonl(cfg.data.validation_data, "--validation-data")
    return split_validation(records, cfg.data.validation_share, cfg.trainer.seed)


def start_from(lm: CausalLM, run: str | None, metadata: dict | None) -> str | None:
    """Apply a finished run (--init-from, its metadata read) to the freshly loaded base model; its
    absolute path."""
    if not run:
        return None
    from imprint.lm.generate import apply_run

    if metadata.get("base_model_fingerprint") != lm.fingerprint:
        raise ImprintError(f"--init-from {run}: trained on another base model ({metadata.get('base_model')}); "
                           "start from a run of --model")
    apply_run(lm, run, metadata)
    log.info("starting from run %s", run)
    return str(Path(run).resolve())


def train(cfg: LMRunConfig) -> Path:
    train_records, validation_records = load_records(cfg)
    run = RunFolder(cfg.run.output)
    if cfg.run.resume is None:
        run.check_new_output()
    elif run.is_finished():
        log.info("%s: the run already finished; nothing to resume", run.path)
        return run.path
    else:
        check_resume_settings(run.read_config(), cfg.to_dict(), build_config, RESUMABLE_CHANGES, run.config_path)
    parent = None
    if cfg.run.init_from:  # checked before any model loads
        from imprint.lm.generate import read_lm_metadata

        parent = read_lm_metadata(cfg.run.init_from, "--init-from")
    accelerator = make_accelerator(cfg.trainer.mixed_precision)
    check_can_run(cfg.trainer, accelerator.device)
    method = LM_METHODS[cfg.run.method](cfg.method)
    objective = LM_OBJECTIVES[cfg.run.objective](cfg.objective)
    if objective.needs_pairs:
        held_out_flag = "--validation-data" if cfg.data.validation_data else "--data"
        for flag, records in (("--data", train_records), (held_out_flag, validation_records)):
            unpaired = next((r for r in records if r.rejected is None), None)
            if unpaired is not None:
                raise ImprintError(f"{flag} line {unpaired.line}: --objective {objective.name} needs preference "
                                   "records ({\"prompt\", \"chosen\", \"rejected\"}); this one has no rejected answer")
    dtype = torch.float32 if method.trains_base_weights else DTYPES[cfg.trainer.mixed_precision]
    lm = CausalLM.load(cfg.run.model, dtype, accelerator.device)
    start = start_from(lm, cfg.run.init_from, parent)
    train_records = objective.prepare_records(train_records, lm, cfg, run.path)
    train_examples = tokenize_all(lm.tokenizer, train_records, cfg.data.max_length, "--data", cfg.data.system_prompt)
    validation_examples = tokenize_all(lm.tokenizer, validation_records, cfg.data.max_length,
                                       "--validation-data" if cfg.data.validation_data else "--data",
                                       cfg.data.system_prompt)
    log.info("%d training examples, %d validation examples", len(train_examples), len(validation_examples))
    task = LMTask(cfg, accelerator, lm, train_examples, method, objective, validation_examples)
    run.create()
    run.write_config(cfg.to_dict())
    if validation_records:
        write_jsonl([r.to_json() for r in validation_records], run.path / "validation.jsonl")
    objective.setup(task, run)
    validation, stop = Validation(task, run), MethodStop(method)
    fit(task, cfg.trainer, run, accelerator, resume=cfg.run.resume, callbacks=[stop, validation],
        desc=f"lm train {cfg.run.method}")
    trained = stop.stopped_at or cfg.trainer.steps
    lm.model.eval()
    files = method.save_result(lm, run.path)
    run.write_metadata({
        "imprint_version": imprint.__version__,
        "task": "lm",
        **lm.describe(),
        "method": cfg.run.method,
        "steps": trained,
        "stopped_early": trained < cfg.trainer.steps,
        "files": files,
        "hyperparameters": cfg.to_dict(),
        **({"init_from": start} if start else {}),
        "trainable_parameters": method.trainable_parameter_count(lm),
        **objective.metadata(),
        "training_examples": len(train_examples),
        "validation_loss": validation.losses.get(trained),
        **method.metadata(),
    })
    log.info("run finished: %s", run.path)
    if cfg.evaluation.evaluate:
        from imprint.lm.evaluate import evaluate_run

        evaluate_run(run.path, max_new_tokens=cfg.evaluation.max_new_tokens)
    return run.path

