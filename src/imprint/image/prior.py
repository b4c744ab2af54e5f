"""Prior-preservation class images: generated once by the frozen base model and reused.

A generated folder carries manifest.json (model, prompt, resolution, seed, count, steps,
precision);
a later run with the same settings reuses it, and one that asks for more images only
generates the missing ones. A folder without a manifest holds the user's own class photos
and is used as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from imprint.image.data import list_image_files
from imprint.image.sampling import images_per_call
from imprint.util.files import cache_root, write_json_atomic

log = logging.getLogger("imprint")

MANIFEST = "manifest.json"
BULK_AT_64PX = 64  # class images per pipeline call at 64 px (images_per_call)


def default_cache_root() -> Path:
    return cache_root() / "class_images"


def manifest_for(model: str, prompt: str, resolution: int, seed: int, steps: int, precision: str) -> dict:
    return {"model": model, "prompt": prompt, "resolution": resolution, "seed": seed,
            "inference_steps": steps, "precision": precision}


def cache_folder(manifest: dict) -> Path:
    key = hashlib.sha256(repr(sorted(manifest.items())).encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() else "-" for c in manifest["prompt"])[:40].strip("-")
    return default_cache_root() / f"{slug}-{manifest['resolution']}px-{key}"


def ensure_class_images(folder: Path | None, count: int, model: str, prompt: str, resolution: int,
                        seed: int, steps: int, make_pipeline, precision: str = "fp32") -> list[Path]:
    """Return `count` class image paths, generating whatever is missing. `precision` is recorded
    (images of another precision are not reused); the caller renders in it (core.precision's
    generation_autocast)."""
    wanted = manifest_for(model, prompt, resolution, seed, steps, precision)
    folder = Path(folder) if folder else cache_folder(wanted)
    manifest_path = folder / MANIFEST
    if folder.is_dir() and not manifest_path.exists() and any(folder.iterdir()):
        images = list_image_files(folder, "--class-images")
        if len(images) < count:
            log.warning("--class-images %s holds %d images, fewer than --num-class-images %d; "
                        "using them all", folder, len(images), count)
        return images[:count]

    folder.mkdir(parents=True, exist_ok=True)
    existing: list[str] = []
    if manifest_path.exists():
        with open(manifest_path) as f:
            manifest = json.load(f)
        same = {k: manifest.get(k) for k in wanted} == wanted
        if same:
            existing = [name for name in manifest.get("files", []) if (folder / name).is_file()]
        else:
            log.warning("class images in %s were made with other settings; regenerating", folder)
    if len(existing) >= count:
        log.info("reusing %d class images from %s", count, folder)
        return [folder / name for name in existing[:count]]

    log.info("generating %d class images of %r into %s (%d px, %d steps, %s)", count - len(existing), prompt,
             folder, resolution, steps, precision)
    pipe = make_pipeline()
    files = list(existing)
    per_call = images_per_call(resolution, at_64px=BULK_AT_64PX)
    bar = tqdm(total=count - len(existing), desc="class images", unit="img")
    for first in range(len(existing), count, per_call):
        indices = range(first, min(count, first + per_call))
        # one generator per image: image i is the same whether made in one go or topped up
        generators = [torch.Generator("cpu").manual_seed(seed * 100_003 + index) for index in indices]
        images = pipe([prompt] * len(indices), height=resolution, width=resolution,
                      num_inference_steps=steps, generator=generators).images
        for index, image in zip(indices, images):
            name = f"{index:05d}.png"
            tmp = folder / f".{name}.tmp.png"
            image.save(tmp)
            os.replace(tmp, folder / name)
            files.append(name)
        write_json_atomic(manifest_path, {**wanted, "count": len(files), "files": files})
        bar.update(len(indices))
    bar.close()
    return [folder / name for name in files[:count]]
