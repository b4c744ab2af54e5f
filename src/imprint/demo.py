"""`imprint demo`: the whole job offline on a CPU in a few minutes.

Until the toy-world model ships (a pre-trained model in the repo), the demo builds a tiny
Stable Diffusion model locally, warms its UNet up as a generic denoiser, draws a toy subject,
personalises the model to it with LoRA and prior preservation, and writes before/after
grids. The images are coarse: the model is tiny and barely trained; the plumbing is real.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from PIL import Image, ImageDraw

log = logging.getLogger("imprint")


def draw_toy_subject(folder: Path, count: int = 5, size: int = 96) -> Path:
    """A red ball with a yellow star-ish emblem, photographed on varied backgrounds."""
    folder.mkdir(parents=True, exist_ok=True)
    backgrounds = [(90, 160, 70), (210, 190, 140), (235, 235, 245), (70, 110, 190), (150, 100, 70)]
    for i in range(count):
        image = Image.new("RGB", (size, size), backgrounds[i % len(backgrounds)])
        draw = ImageDraw.Draw(image)
        r = size // 4 + 2 * (i % 3)
        cx, cy = size // 2 + 6 * (i - 2), size // 2 + 4 * ((i * 7) % 3 - 1)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(210, 30, 35))
        draw.polygon([(cx, cy - r // 2), (cx + r // 3, cy + r // 3), (cx - r // 2, cy - r // 6),
                      (cx + r // 2, cy - r // 6), (cx - r // 3, cy + r // 3)], fill=(250, 215, 0))
        image.save(folder / f"{i:02d}.png")
    return folder


def run_demo(output: str | Path, steps: int = 150) -> Path:
    from imprint.config import build_config
    from imprint.families import load_pipeline
    from imprint.generate import generate
    from imprint.tiny import save_sd_model
    from imprint.train.loop import train
    from imprint.train.sampling import sample, save_grid

    start = time.time()
    output = Path(output)
    model = output / "base-model"
    if not (model / "model_index.json").is_file():
        log.info("building a tiny Stable Diffusion model in %s (random weights, warmed up)", model)
        save_sd_model(model, warm_up_steps=60)
    subject = draw_toy_subject(output / "subject")
    run = output / "run"
    resume = "latest" if (run / "config.json").exists() else None
    cfg = build_config({}, dict(
        model=str(model), images=str(subject), class_name="ball", method="lora", rank=8,
        lr=3e-3, steps=steps, batch_size=2, resolution=32, prior_preservation=True,
        num_class_images=8, class_images=str(output / "class-images"), class_inference_steps=10,
        checkpoint_every=50, sample_every=50, sample_inference_steps=10, output=str(run),
        resume=resume, sample_prompt=["a photo of {token} {class_name}"],
    ))
    train(cfg)

    prompts = ["a photo of sks ball", "a sks ball on the beach"]
    before = sample(load_pipeline(str(model)), prompts, 32, 0, 10, images_per_prompt=4)
    save_grid(before, output / "before.png", cols=4)
    generate(run, prompts, output / "after", num_images=4, steps=10)
    print(f"demo finished in {time.time() - start:.0f} s")
    print(f"  subject photos: {subject}")
    print(f"  run folder:     {run}  (pytorch_lora_weights.safetensors, metadata.json)")
    print(f"  before:         {output / 'before.png'}")
    print(f"  after:          {output / 'after' / 'grid.png'}")
    return run
