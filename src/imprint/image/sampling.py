"""Sample images and grids: during training (progress you can see) and in `generate`."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image


def make_grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * w, (i // cols) * h))
    return grid


def images_per_call(resolution: int, at_64px: int = 16) -> int:
    """How many images go through a pipeline at once: `at_64px` at 64 px, fewer as the pixels grow
    (with 16, 256 px and up one at a time). Class images, made in bulk, use 64: on a 2-core AMX CPU a
    toy class image took 69 ms at 16 per call and 55 ms at 64 under bf16 (131 and 133 ms in fp32)."""
    return max(1, min(at_64px, (64 * 64 * at_64px) // (resolution * resolution)))


def native_resolution(pipe) -> int:
    """The image size a pipeline generates when none is given (its model's sample size)."""
    sample_size = getattr(pipe, "default_sample_size", None) or pipe.unet.config.sample_size
    return sample_size * pipe.vae_scale_factor


def default_guidance(pipe) -> float:
    """The pipeline's own default guidance scale (SD 7.5, SDXL 5, SD3 7, FLUX's embedded 3.5)."""
    import inspect

    return inspect.signature(pipe.__call__).parameters["guidance_scale"].default


@torch.no_grad()
def sample(pipe, prompts: list[str], resolution: int, seed: int, steps: int,
           images_per_prompt: int = 1, guidance_scale: float | None = None,
           prompt_embeds: list[dict[str, torch.Tensor]] | None = None) -> list[Image.Image]:
    """Deterministic for a given seed: image j of prompt i always starts from the same noise.
    With `prompt_embeds` (per prompt, the family's encoding arguments of the pipeline:
    family.encode_for_sampling) the pipeline needs no text encoder.
    Small images go through the pipeline several at a time (each with its own generator)."""
    guidance_scale = default_guidance(pipe) if guidance_scale is None else guidance_scale
    jobs = [(i, j) for i in range(len(prompts)) for j in range(images_per_prompt)]
    per_call = images_per_call(resolution)
    images = []
    for start in range(0, len(jobs), per_call):
        chunk = jobs[start:start + per_call]
        generators = [torch.Generator("cpu").manual_seed(seed + 1000 * i + j) for i, j in chunk]
        if prompt_embeds is None:
            text = {"prompt": [prompts[i] for i, _ in chunk]}
        else:
            text = {key: torch.cat([prompt_embeds[i][key] for i, _ in chunk]) for key in prompt_embeds[0]}
        # a method whose conditioning changes per step installs its callback on the pipeline
        per_step = getattr(pipe, "imprint_step_callback", None)
        extra = dict(callback_on_step_end=per_step, callback_on_step_end_tensor_inputs=["prompt_embeds"]) if per_step else {}
        images += pipe(**text, height=resolution, width=resolution, num_inference_steps=steps,
                       guidance_scale=guidance_scale, generator=generators, **extra).images
    return images


def save_grid(images: list[Image.Image], path: Path, cols: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    make_grid(images, cols).save(tmp)
    tmp.replace(path)
    return path
