"""The optimizer of a run, built in one place from the trainer settings: AdamW (the default),
bitsandbytes' 8-bit AdamW or Prodigy. What a choice needs (a package, kernels for the device)
is checked by `check_optimizer` before any model is loaded, and is a one-line error."""

from __future__ import annotations

import contextlib
import functools
import io
import logging

import torch

from imprint.util.errors import ImprintError

log = logging.getLogger("imprint")

# Prodigy estimates the step size itself; its lr multiplies that estimate, so 1.0 is the
# setting its authors recommend for every network (and d_coef, not lr, is the knob to turn).
PRODIGY_LR = 1.0


def default_lr(optimizer: str, method_lr: float) -> float:
    """The lr where --lr is not given: the method's, or Prodigy's multiplier."""
    return PRODIGY_LR if optimizer == "prodigy" else method_lr


def check_optimizer(optimizer: str, device: torch.device | str) -> None:
    """Raise the one-line error make_optimizer would raise, without building anything big."""
    if optimizer == "adamw8bit":
        _bitsandbytes(torch.device(device).type)
    elif optimizer == "prodigy":
        _prodigy()


def make_optimizer(params, settings) -> torch.optim.Optimizer:
    """The optimizer of `settings.optimizer` over `params`, a list of parameters or of parameter
    groups (dicts, each with "params" and optionally its own "lr"); a TrainerSettings' lr and weight decay."""
    params = list(params)
    flat = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    device = flat[0].device if flat else torch.device("cpu")
    check_optimizer(settings.optimizer, device)
    if settings.optimizer == "adamw8bit":
        bnb = _bitsandbytes(device.type)
        return bnb.optim.AdamW8bit(params, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8,
                                   weight_decay=settings.weight_decay)
    if settings.optimizer == "prodigy":
        if not 0.1 <= settings.lr <= 10:
            log.warning("--optimizer prodigy with --lr %g: Prodigy's lr multiplies the step size it "
                        "estimates itself, so each step is %gx that estimate; 1.0 is recommended: "
                        "leave --lr out", settings.lr, settings.lr)
        # The prodigyopt README's settings for diffusion models (github.com/konstmish/prodigy,
        # "training diffusion models"): safeguard_warmup=True, use_bias_correction=True,
        # weight_decay=0.01 (--weight-decay's default), betas (0.9, 0.99); d_coef 1 (its default)
        # is the knob the README names for a smaller or larger step. diffusers' DreamBooth / LoRA
        # scripts use the same (their --prodigy_safeguard_warmup and --prodigy_use_bias_correction
        # default to True). safeguard_warmup stays on without a warm-up too: it keeps lr out of the
        # denominator of the estimate, which any schedule that moves lr (cosine, linear) needs as well.
        Prodigy = _prodigy()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Using decoupled weight decay"
            return Prodigy(params, lr=settings.lr, betas=(0.9, 0.99), weight_decay=settings.weight_decay,
                           d_coef=1.0, use_bias_correction=True, safeguard_warmup=True)
    # Fused AdamW (one kernel for every tensor) where torch has it and it is safe: every parameter a
    # CUDA floating-point tensor. On the CPU torch's default (a loop over the tensors) is kept, so a
    # CPU run computes the same bits as before (tests/test_equivalence.py); a CUDA run takes a few
    # ulps of difference from the foreach default for the speed.
    fused = {"fused": True} if flat and all(p.is_cuda and p.is_floating_point() for p in flat) else {}
    return torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=settings.weight_decay, **fused)


def logged_scalars(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """What the log shows of the optimizer beside lr: Prodigy's step-size estimate d (each step
    moves by about lr * d), without which its logged lr of 1.0 says nothing."""
    group = optimizer.param_groups[0]
    return {"prodigy_d": float(group["d"])} if "d_coef" in group and "d" in group else {}


def _prodigy():
    try:
        from prodigyopt import Prodigy
    except ImportError as e:
        raise ImprintError("--optimizer prodigy: the prodigyopt package is not installed; pip install "
                           "prodigyopt (or imprint-ml[prodigy]), or use --optimizer adamw") from e
    return Prodigy


@functools.lru_cache(maxsize=None)
def _bitsandbytes(device_type: str):
    """bitsandbytes, once it has run a step of 8-bit AdamW on this device: an install without
    kernels for it imports, then fails at the first step, deep inside a training run."""
    quiet = logging.getLogger("bitsandbytes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its import warns about 4-bit kernels, which no optimizer uses
    try:
        import bitsandbytes
    except Exception as e:  # ImportError, or a broken install failing while it loads its library
        raise ImprintError("--optimizer adamw8bit: bitsandbytes is not installed or does not load "
                           f"({type(e).__name__}); pip install bitsandbytes (or imprint-ml[bnb]) on a "
                           "machine with a CUDA GPU, or use --optimizer adamw") from e
    finally:
        quiet.setLevel(level)
    try:
        # 4096 elements: bitsandbytes keeps smaller tensors' state in 32 bits (min_8bit_size)
        probe = torch.nn.Parameter(torch.zeros(4096, device=device_type))
        probe.grad = torch.ones_like(probe)
        with contextlib.redirect_stdout(io.StringIO()):
            bitsandbytes.optim.AdamW8bit([probe], lr=1e-3).step()
        if not torch.isfinite(probe).all():
            raise RuntimeError("the probe step gave non-finite weights")
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ImprintError(f"--optimizer adamw8bit: bitsandbytes' 8-bit AdamW does not run on this "
                           f"machine's {device_type} ({reason}); it needs a CUDA GPU (or a bitsandbytes "
                           "release with kernels for this device): use --optimizer adamw here") from e
    return bitsandbytes
