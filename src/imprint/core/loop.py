"""The training loop every run goes through: image personalisation, the toy world's
pre-training, and (next) language models. It knows no modality: a Task gives it the
parameters, the loss of a step and the state to checkpoint; callbacks add samples, scores.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod

import torch
from tqdm.auto import tqdm

import imprint
from imprint.core import checkpoint as ckpt
from imprint.core.ema import EMA
from imprint.core.optim import check_optimizer, logged_scalars, make_optimizer
from imprint.core.run_folder import RunFolder, tensorboard_writer
from imprint.core.settings import TrainerSettings
from imprint.util.errors import ImprintError
from imprint.util.testing import test_kill

log = logging.getLogger("imprint")


class Task(ABC):
    """What the core trains. Every random draw of `loss` must come from (seed, step, micro)."""

    name = "task"

    @abstractmethod
    def parameters(self) -> list[torch.nn.Parameter]:
        """The parameters to optimise."""

    @abstractmethod
    def loss(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of micro-batch `micro` of optimizer step `step`, and named parts to log."""

    @abstractmethod
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint must hold to restore training exactly."""

    @abstractmethod
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def parameter_groups(self) -> list[dict]:
        """The optimizer's parameter groups; a group may carry its own "lr" (default: one group)."""
        return [{"params": self.parameters()}]

    def before_optimizer_step(self, step: int) -> None:
        """After the gradients of update `step` (0-based) are summed, before they are used (a
        method that skips a step sets them to None)."""

    def after_optimizer_step(self, step: int) -> None:
        """For tasks whose method constrains the weights after update `step` (1-based)."""

    def ema_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors an EMA averages (default: every trained parameter)."""
        return {str(i): p.data for i, p in enumerate(self.parameters())}

    def make_optimizer(self, settings: TrainerSettings):
        """The optimizer (default: --optimizer over parameter_groups); a method with an optimizer
        of its own (LIFT's sparse Adam) makes it here."""
        return make_optimizer(self.parameter_groups(), settings)

    def make_scheduler(self, optimizer, settings: TrainerSettings):
        from diffusers.optimization import get_scheduler

        return get_scheduler(settings.lr_scheduler, optimizer, num_warmup_steps=settings.lr_warmup_steps,
                             num_training_steps=settings.steps)


class Callback:
    """Hooks around the loop; each returns nothing unless said."""

    ema: EMA | None = None  # set by fit: the run's EMA, for callbacks that sample with the average

    def on_resume(self, step: int) -> None: ...

    def on_checkpoint(self, step: int) -> set[int]:
        """Before checkpoint `step` is written; -> steps whose checkpoints must be kept."""
        return set()

    def on_step_end(self, step: int) -> None: ...

    def should_stop(self, step: int) -> bool:
        """After step `step` (and on resuming at it): end training here (early stopping)."""
        return False

    def on_train_end(self, step: int) -> None:
        """`step`: the last step trained (settings.steps unless a callback stopped the run)."""


def check_can_run(settings: TrainerSettings, device) -> None:
    """What fit would refuse for want of a package or of kernels for `device` (--optimizer,
    --log-with), as a one-line error: a task calls it before it loads its model."""
    check_optimizer(settings.optimizer, device)
    if settings.log_with == "tensorboard":
        tensorboard_writer()


def fit(task: Task, settings: TrainerSettings, run: RunFolder, accelerator, resume: str | None = None,
        callbacks: list[Callback] = (), desc: str = "train") -> EMA | None:
    """Train `task` for settings.steps optimizer steps in `run`; -> the EMA, if one was kept."""
    params = task.parameters()
    check_can_run(settings, params[0].device if params else accelerator.device)
    raw_optimizer = task.make_optimizer(settings)
    scheduler = task.make_scheduler(raw_optimizer, settings)
    optimizer = accelerator.prepare_optimizer(raw_optimizer)
    ema = EMA(task.ema_tensors(), settings.ema_decay) if settings.ema_decay > 0 else None
    start = _resume(task, run, resume, optimizer, scheduler, ema)
    for callback in callbacks:
        callback.ema = ema
        callback.on_resume(start)

    def write_checkpoint(step: int) -> None:
        protect = set().union(*[c.on_checkpoint(step) for c in callbacks]) if callbacks else set()
        ckpt.save_checkpoint(run.path, step, task.trainable_state(), optimizer.state_dict(),
                             scheduler.state_dict(), {"imprint_version": imprint.__version__},
                             settings.keep_checkpoints, before_rename=lambda: test_kill("checkpoint", step),
                             protect=protect, more_tensors={"ema": ema.state_dict()} if ema else None)

    bar = tqdm(total=settings.steps, initial=start, desc=desc, unit="step", dynamic_ncols=True, disable=None)
    step_log, started = run.open_log(start, settings.log_with), time.time()
    accumulate = settings.gradient_accumulation_steps
    last = settings.steps
    # a run killed after its stop was decided stops again on resuming
    steps = range(start, settings.steps) if not (start and _stop(callbacks, start)) else range(0)
    if not steps:
        last = start
    for step in steps:
        parts: dict[str, float] = {}
        loss_value = 0.0
        for micro in range(accumulate):
            loss, micro_parts = task.loss(step, micro)
            accelerator.backward(loss / accumulate if accumulate > 1 else loss)
            loss_value += loss.item() / accumulate
            parts = {k: parts.get(k, 0.0) + v / accumulate for k, v in micro_parts.items()}
        task.before_optimizer_step(step)
        if settings.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        task.after_optimizer_step(step + 1)
        if ema:
            ema.update(step)

        done, lr = step + 1, scheduler.get_last_lr()[0]
        if loss_value != loss_value:
            raise ImprintError(f"loss became NaN at step {done}; lower --lr or use --mixed-precision bf16/no "
                               f"(checkpoints so far are kept in {run.path / 'checkpoints'})")
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        step_log.write({"step": done, "loss": loss_value, "lr": lr, **logged_scalars(raw_optimizer),
                        "time": time.time(), **parts})
        _log_line_without_bar(bar, done, settings.steps, start, started, loss_value)
        test_kill("step", done)
        if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < settings.steps:
            write_checkpoint(done)
        for callback in callbacks:
            callback.on_step_end(done)
        if done < settings.steps and _stop(callbacks, done):
            last = done
            break
    bar.close()
    step_log.close()
    for callback in callbacks:
        callback.on_train_end(last)
    return ema


def _stop(callbacks, step: int) -> bool:
    stop = [c for c in callbacks if c.should_stop(step)]
    if stop:
        log.info("stopping early after step %d (%s)", step, ", ".join(type(c).__name__ for c in stop))
    return bool(stop)


def _resume(task: Task, run: RunFolder, resume: str | None, optimizer, scheduler, ema: EMA | None) -> int:
    """The step to start from: 0, or that of the checkpoint `resume` names ('latest' or a folder)."""
    if resume is None:
        return 0
    found = ckpt.find_resume_checkpoint(run.path, resume)
    if found is None:
        log.info("no checkpoint in %s yet; starting from step 0", run.path)
        return 0
    state, trainable, optimizer_state = ckpt.load_checkpoint(found)
    task.load_trainable_state(trainable)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(state["lr_scheduler"])
    if ema:
        saved = ckpt.load_more_tensors(found, "ema")
        if saved is None:
            raise ImprintError(f"{found}: has no EMA weights, but --ema-decay is on; resume with the "
                               "run's own settings")
        ema.load_state_dict(saved)
    log.info("resumed from %s (step %d)", found, state["step"])
    return state["step"]


def _log_line_without_bar(bar, done: int, steps: int, start: int, started: float, loss: float) -> None:
    """No terminal, no bar: a log line per 10% of the run instead."""
    if bar.disable and (done % max(1, steps // 10) == 0 or done == steps):
        rate = (done - start) / max(time.time() - started, 1e-9)
        log.info("step %d/%d  loss %.4f  %.2f it/s  ETA %.0f s", done, steps, loss, rate,
                 (steps - done) / max(rate, 1e-9))
