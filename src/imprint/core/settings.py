"""The core's settings: what every training run has, whatever it trains."""

from __future__ import annotations

from dataclasses import dataclass

from imprint.util.settings import setting

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy")  # built in core/optim.py
LOGGERS = ("none", "tensorboard")  # where log.jsonl's scalars are also written


@dataclass
class TrainerSettings:
    steps: int = setting(500, "optimizer steps", positive=True)
    optimizer: str = setting("adamw", "adamw: torch AdamW; adamw8bit: bitsandbytes' 8-bit AdamW (less "
                             "optimizer memory; for CUDA GPUs); prodigy: Prodigy, which estimates the step size "
                             "itself (lr 1.0)", choices=OPTIMIZERS)
    lr: float | None = setting(None, "learning rate", shown_default="the method's (`imprint methods`): "
                               "lora 1e-4, full 5e-6, textual_inversion 5e-4; 1.0 with --optimizer prodigy")
    lr_scheduler: str = setting("constant", "learning-rate schedule", choices=SCHEDULERS)
    lr_warmup_steps: int = setting(0, "linear warm-up steps of the schedule", non_negative=True)
    weight_decay: float = setting(1e-2, "decoupled weight decay (AdamW's, also of adamw8bit and prodigy)")
    max_grad_norm: float = setting(1.0, "clip the gradient norm to this (0: no clipping)")
    gradient_accumulation_steps: int = setting(1, "batches whose gradients are summed per optimizer step",
                                               positive=True)
    mixed_precision: str = setting("no", "compute dtype of the frozen parts and autocast "
                                   "(fp16 needs a CUDA GPU)", choices=("no", "fp16", "bf16"))
    ema_decay: float = setting(0.0, "keep an EMA of the trained weights with this decay and ship it "
                               "(0: off; e.g. 0.999)")
    seed: int = setting(0, "seed of every random draw (data order, noise, timesteps, init)")
    checkpoint_every: int = setting(250, "write a resumable checkpoint every N steps (0: never)",
                                    non_negative=True)
    keep_checkpoints: int = setting(3, "how many checkpoints to keep (the best one is always kept)",
                                    positive=True)
    log_with: str = setting("none", "also write every scalar of log.jsonl to this logger: tensorboard "
                            "writes RUN/tensorboard/ (needs the tensorboard package)", choices=LOGGERS)
