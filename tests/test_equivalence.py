"""The trainer core was rebuilt (issue 12) without changing what a run learns: the same
command with the same seed gives the fused-UNet outputs recorded before the rebuild."""

import torch
from safetensors.torch import load_file

from equivalence import REFERENCE, fused_unet_outputs, train_toy_run


def test_same_command_same_model_as_before_the_redesign(tmp_path):
    outputs = fused_unet_outputs(train_toy_run(tmp_path))["unet_output"]
    reference = load_file(str(REFERENCE))["unet_output"]
    torch.testing.assert_close(outputs, reference, rtol=1e-4, atol=1e-5)
