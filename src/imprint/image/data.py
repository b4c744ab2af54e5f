"""Subject folders -> normalised RGB images -> tensors in [-1, 1].

Every photo is made the same: EXIF orientation applied, transparency composited on white,
CMYK / grey / palette / 16-bit converted to 8-bit RGB, resized so the short side is the
training resolution, then centre-cropped square (or, with --buckets, to its bucket's size).
A caption file NAME.txt beside photo NAME.jpg is that photo's training prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from imprint.util.errors import ImprintError

log = logging.getLogger("imprint")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass
class SubjectImages:
    paths: list[Path]
    images: list[Image.Image]  # RGB, resolution x resolution


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparent pixels become white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bit by the true range of the mode, not clip
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    return fit_to_size(image, resolution, resolution)


def fit_to_size(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resized to cover width x height (aspect kept), then centre-cropped to it."""
    w, h = image.size
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def load_image_file(path: Path, resolution: int | None = None) -> Image.Image:
    """Decode one file fully; a file that does not decode raises ImprintError naming it."""
    try:
        if path.stat().st_size == 0:
            raise ImprintError(f"{path}: empty (0-byte) image file; remove it or replace it")
        with Image.open(path) as opened:
            opened.load()
            image = to_rgb(opened)
    except ImprintError:
        raise
    except Image.DecompressionBombError as e:
        raise ImprintError(
            f"{path}: {e.args[0].split(' exceeds')[0] if e.args else 'image'} is over PIL's pixel limit "
            f"({Image.MAX_IMAGE_PIXELS} pixels, a guard against decompression bombs); downscale the photo"
        ) from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImprintError(
            f"{path}: not a readable image ({type(e).__name__}); remove it or re-export it"
        ) from e
    return resize_center_crop(image, resolution) if resolution else image


def list_image_files(folder: str | Path, flag: str = "--images") -> list[Path]:
    """Image files of a folder, sorted; anything else is named in one warning and skipped
    (but not a photo's caption file, NAME.txt beside NAME.jpg)."""
    root = Path(folder)
    if not root.exists():
        raise ImprintError(f"{flag} {folder}: folder not found; pass the folder of subject photos")
    if not root.is_dir():
        raise ImprintError(f"{flag} {folder}: not a folder; pass the folder that holds the photos")
    files = sorted(p for p in root.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    stems = {p.stem for p in images}
    skipped = [p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS
               and not (p.suffix == ".txt" and p.stem in stems)]
    if skipped:
        log.warning("skipping %d non-image file(s) in %s: %s", len(skipped), root, ", ".join(skipped))
    if not images:
        raise ImprintError(
            f"{flag} {folder}: no images (.jpg, .png, .webp) found; put the subject photos there"
        )
    return images


def load_subject_images(folder: str | Path, resolution: int, flag: str = "--images") -> SubjectImages:
    paths = list_image_files(folder, flag)
    images, bad = [], []
    for path in paths:
        try:
            images.append(load_image_file(path, resolution))
        except ImprintError as e:
            bad.append(str(e))
    if bad:
        # every rejected file is named, not only the first one
        raise ImprintError(
            f"{flag} {folder}: {len(bad)} file(s) rejected: " + "; ".join(bad)
        )
    return SubjectImages(paths=paths, images=images)


def caption_path(image_path: Path) -> Path:
    return image_path.with_suffix(".txt")


def read_captions(paths: list[Path]) -> list[str | None]:
    """Per photo, the text of its caption file NAME.txt (whitespace runs and line breaks as one
    space), or None where there is none; an empty or non-UTF-8 caption file is an error naming it."""
    captions = []
    for path in paths:
        file = caption_path(path)
        if not file.is_file():
            captions.append(None)
            continue
        try:
            text = file.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ImprintError(f"{file}: caption file is not UTF-8 text (byte {e.start}); save it as UTF-8, "
                               "or delete it to train that photo with --instance-prompt") from e
        text = " ".join(text.split())
        if not text:
            raise ImprintError(f"{file}: empty caption file; write the photo's caption in it, or delete it to "
                               "train that photo with --instance-prompt")
        captions.append(text)
    return captions


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> float tensor (N, 3, H, W) in [-1, 1]."""
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
