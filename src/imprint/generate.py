"""Generate images with a finished run: the base model, the run's result applied, prompts in."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from imprint.errors import ImprintError
from imprint.families import load_pipeline, resolve_model
from imprint.families.sd import architecture_fingerprint
from imprint.methods import METHODS
from imprint.train.sampling import sample, save_grid

log = logging.getLogger("imprint")


def read_metadata(run: str | Path) -> dict:
    path = Path(run) / "metadata.json"
    if not path.is_file():
        hint = " (training did not finish: resume it with `imprint train ... --resume`)" if (
            Path(run) / "config.json").is_file() else ""
        raise ImprintError(f"--run {run}: no metadata.json, so not a finished imprint run{hint}")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ImprintError(f"{path}: unreadable ({e}); the run folder is damaged") from e


def load_run_pipeline(run: str | Path, model: str | None = None, dtype=torch.float32):
    """The base model with the run applied; refuses a base model of another architecture."""
    run = Path(run)
    metadata = read_metadata(run)
    method = METHODS.get(metadata.get("method"))
    if method is None:
        raise ImprintError(f"{run / 'metadata.json'}: unknown method {metadata.get('method')!r}; "
                           "upgrade imprint to load it")
    pipe = load_pipeline(model or metadata["base_model"], dtype)
    fingerprint = architecture_fingerprint(dict(pipe.unet.config), pipe.text_encoder.config.to_dict())
    if fingerprint != metadata.get("base_model_fingerprint"):
        raise ImprintError(
            f"--model {model}: not the base model of run {run} (trained on "
            f"{metadata['base_model']}, another architecture); pass --model {metadata['base_model']}"
        )
    if model and resolve_model(model) != metadata["base_model"]:
        log.warning("run %s was trained on %s; applying it to %s (same architecture)",
                    run, metadata["base_model"], model)
    method.load_into_pipeline(pipe, run, metadata)
    return pipe, method, metadata


def generate(run: str | Path, prompts: list[str], output: str | Path, model: str | None = None,
             num_images: int = 4, seed: int = 0, steps: int = 30, guidance_scale: float = 7.5,
             resolution: int | None = None) -> list[Path]:
    pipe, method, metadata = load_run_pipeline(run, model)
    resolution = resolution or metadata["hyperparameters"]["resolution"]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    all_images = []
    for i, prompt in enumerate(prompts):
        text = method.rewrite_prompt(prompt, metadata)
        images = sample(pipe, [text], resolution, seed + 1000 * i, steps, num_images, guidance_scale)
        for j, image in enumerate(images):
            path = output / f"{i:02d}-{j:02d}.png"
            image.save(path)
            written.append(path)
        all_images += images
    save_grid(all_images, output / "grid.png", cols=num_images)
    return written
