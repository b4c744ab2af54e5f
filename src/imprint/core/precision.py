"""Mixed precision through accelerate: the compute dtype of frozen parts, autocast, backward."""

from __future__ import annotations

import contextlib

import torch

from imprint.util.errors import ImprintError

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GENERATION_PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # of images made only to train on


def cpu_computes_bf16() -> bool:
    """Whether this CPU has AMX tiles: there bf16 matrix products run natively (on a 2-core Xeon with
    AMX, a toy-model class image renders 1.8x faster under bf16 autocast); elsewhere bf16 is emulated
    and no faster than float32."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x; absent: assume no
    try:
        return bool(check and check())
    except RuntimeError:
        return False


def generation_precision(choice: str, mixed_precision: str, device: torch.device, flag: str) -> str:
    """The precision ("fp32", "bf16" or "fp16") of images a run generates only to train on (class
    images). auto: the run's --mixed-precision where it has one; without one bf16 where the device
    computes it natively (a CUDA GPU that supports it, a CPU with AMX), else fp32. diffusers'
    DreamBooth scripts likewise render class images in half precision on a GPU whatever the training
    precision (their --prior_generation_precision)."""
    if choice not in GENERATION_PRECISIONS:
        raise ImprintError(f"{flag} {choice}: choose one of {', '.join(GENERATION_PRECISIONS)}")
    if choice == "auto":
        if mixed_precision != "no":
            return mixed_precision
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "bf16" if device.type == "cpu" and cpu_computes_bf16() else "fp32"
    if choice == "fp32" and mixed_precision != "no":
        raise ImprintError(f"{flag} fp32: the frozen model is held in {mixed_precision} (--mixed-precision "
                           f"{mixed_precision}); use {flag} auto, or --mixed-precision no")
    if choice == "fp16" and device.type != "cuda":
        raise ImprintError(f"{flag} fp16 needs a CUDA GPU (the CPU lacks fp16 kernels); use bf16 or fp32")
    return choice


def generation_autocast(device: torch.device, precision: str):
    """The autocast context that renders in `precision` (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def make_accelerator(mixed_precision: str, cpu: bool = False):
    """`cpu`: keep everything on the CPU even where a GPU is found."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ImprintError("--mixed-precision fp16 needs a CUDA GPU (the CPU lacks fp16 kernels); "
                           "use bf16 or no")
    unavailable = (f"--mixed-precision {mixed_precision}: not available on this machine ({{}}); "
                   "use bf16 or no")
    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    except ValueError as e:
        if "already been initialized" in str(e):
            # a second run in one process (a notebook, the tests) with another precision:
            # accelerate keeps one global state, so start it afresh
            AcceleratorState._reset_state(reset_partial_state=True)
            return Accelerator(mixed_precision=mixed_precision, cpu=cpu)
        raise ImprintError(unavailable.format(e)) from e
    except RuntimeError as e:
        raise ImprintError(unavailable.format(e)) from e
