"""The trainer core was rebuilt (issue 12) without changing what a run learns: the same
command with the same seed gives the fused-UNet outputs recorded before the rebuild.

The bound is on the relative norm of the difference, 1e-3. Measured on 2026-12-06: on another CPU
(avx512 with bf16/fp16, where oneDNN picks other kernels) the same 30 steps land 4.2e-5 from the
reference (max abs 1.8e-4, over an elementwise 1e-5 bound that held on the recording machine);
the smallest change of the recipe tried, one step fewer (29), lands 8.9e-3 away, the lr 10% lower
1.5e-2, no prior preservation 9.2e-2. So 1e-3 passes kernel noise and fails any change of the recipe.
"""

import torch
from safetensors.torch import load_file

from equivalence import REFERENCE, fused_unet_outputs, train_toy_run


def test_same_command_same_model_as_before_the_redesign(tmp_path):
    outputs = fused_unet_outputs(train_toy_run(tmp_path))["unet_output"]
    reference = load_file(str(REFERENCE))["unet_output"]
    assert outputs.shape == reference.shape
    relative = ((outputs - reference).norm() / reference.norm()).item()
    assert relative < 1e-3, f"fused-UNet outputs moved by {relative:.2e} of their norm (kernel noise is ~4e-5)"
