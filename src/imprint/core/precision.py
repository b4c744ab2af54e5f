"""Mixed precision through accelerate: the compute dtype of frozen parts, autocast, backward."""

from __future__ import annotations

import torch

from imprint.util.errors import ImprintError

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
