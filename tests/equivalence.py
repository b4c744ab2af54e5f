"""The redesign guard: LoRA + prior preservation on the toy model, 30 steps, seed 0, gives the
fused-UNet outputs recorded before the trainer core was rebuilt (tests/data/equivalence_toy_lora.safetensors).

`python tests/equivalence.py --write` records them anew (only for an intended change of the recipe).
The class images are pinned to fp32: `--class-precision auto` depends on the machine (bf16 on a CPU
with AMX), and the recorded outputs must not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REFERENCE = Path(__file__).with_name("data") / "equivalence_toy_lora.safetensors"
ARGS = ["--method", "lora", "--rank", "8", "--lr", "3e-3", "--steps", "30", "--batch-size", "4",
        "--resolution", "64", "--prior-preservation", "--num-class-images", "4",
        "--class-inference-steps", "4", "--class-precision", "fp32", "--instance-prompt", "a {token} {class_name}",
        "--class-prompt", "a {class_name}", "--checkpoint-every", "0", "--no-final-samples", "--seed", "0"]


def train_toy_run(root: Path) -> Path:
    from imprint.cli import main
    from imprint.toyworld.pretrain import MODEL_DIR
    from imprint.toyworld.subjects import SUBJECTS_BY_NAME, write_subject

    photos = write_subject(SUBJECTS_BY_NAME["striped_circle"], root / "subject")
    run = root / "run"
    rc = main(["train", "--model", str(MODEL_DIR), "--images", str(photos), "--class-name", "circle",
               "--class-images", str(root / "class-images"), "--output", str(run), *ARGS])
    assert rc == 0
    return run


@torch.no_grad()
def fused_unet_outputs(run: Path) -> dict[str, torch.Tensor]:
    from diffusers import StableDiffusionPipeline

    from imprint.toyworld.pretrain import MODEL_DIR

    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL_DIR), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(run))
    pipe.fuse_lora()
    ids = pipe.tokenizer(["a sks circle", "a circle on the beach"], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    cond = pipe.text_encoder(ids)[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, pipe.unet.config.in_channels, 16, 16, generator=g)
    out = pipe.unet(x, torch.tensor([50, 700]), cond).sample
    return {"unet_output": out.contiguous()}


if __name__ == "__main__":
    import tempfile

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        outputs = fused_unet_outputs(train_toy_run(Path(tmp)))
    if "--write" in sys.argv:
        REFERENCE.parent.mkdir(exist_ok=True)
        save_file(outputs, str(REFERENCE))
        print("wrote", REFERENCE)
    else:
        from safetensors.torch import load_file

        ref = load_file(str(REFERENCE))
        print("max abs difference:", (ref["unet_output"] - outputs["unet_output"]).abs().max().item())
