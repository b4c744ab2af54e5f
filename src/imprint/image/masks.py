"""Subject masks: one per photo, the same stem in the --masks folder (DIR/00.png for 00.jpg).

A mask may be in any image mode: a pixel is subject where it is non-zero (in any channel); a
mask with an alpha channel (a cut-out, as background removers write) is its alpha. A mask must
have its photo's size (both read upright, EXIF orientation applied). It goes through the
photo's own resize and crop (square or bucket) and, with --flip, its flip, and is cached at
latent resolution as the share of each latent pixel that is subject (area average, so edges
are fractional).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from imprint.image.data import IMAGE_EXTENSIONS, fit_to_size
from imprint.util.errors import ImprintError

MASK_EXTENSIONS = sorted(IMAGE_EXTENSIONS | {".bmp", ".tif", ".tiff"})


def mask_file(photo: Path, folder: Path, flag: str = "--masks") -> Path:
    """The mask of `photo` in `folder`: the file with the photo's stem and an image extension."""
    found = [folder / f"{photo.stem}{ext}" for ext in MASK_EXTENSIONS if (folder / f"{photo.stem}{ext}").is_file()]
    if not found:
        raise ImprintError(f"{flag} {folder}: no mask for photo {photo.name} (expected {photo.stem}.png, or "
                           f"another image type, in that folder); add it, or drop {flag}")
    if len(found) > 1:
        raise ImprintError(f"{flag} {folder}: two masks for photo {photo.name} ({', '.join(p.name for p in found)}); "
                           "keep one")
    return found[0]


def read_mask(path: Path, size: tuple[int, int], photo: Path) -> Image.Image:
    """The mask as an 'L' image, 255 = subject, 0 = not; checked against its photo's size."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImprintError(f"{path}: not a readable mask image ({type(e).__name__}); re-save it as PNG") from e
    if image.size != size:
        raise ImprintError(f"{path}: the mask is {image.size[0]}x{image.size[1]} but its photo {photo.name} is "
                           f"{size[0]}x{size[1]}; make the mask the photo's size")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        values = np.asarray(image.getchannel("A"))
    else:
        values = np.asarray(image)
        if values.ndim == 3:
            values = values.max(axis=2)
    subject = values > 0
    if not subject.any():
        raise ImprintError(f"{path}: the mask is empty (no non-zero pixel), so its photo {photo.name} would train "
                           "nothing; mark the subject in it")
    return Image.fromarray(np.where(subject, 255, 0).astype(np.uint8), "L")


def photo_size(photo: Path) -> tuple[int, int]:
    with Image.open(photo) as opened:
        return ImageOps.exif_transpose(opened).size


def load_masks(photos: list[Path], folder: str | Path, flag: str = "--masks") -> list[Image.Image]:
    """Every photo's mask at the photo's size; every missing or bad mask is named, not only the first."""
    root = Path(folder)
    if not root.is_dir():
        raise ImprintError(f"{flag} {folder}: folder not found; pass the folder of subject masks "
                           "(one per photo, same file stem)")
    masks, bad = [], []
    for photo in photos:
        try:
            masks.append(read_mask(mask_file(photo, root, flag), photo_size(photo), photo))
        except ImprintError as e:
            bad.append(str(e))
    if bad:
        raise ImprintError(f"{flag} {folder}: {len(bad)} mask(s) rejected: " + "; ".join(bad))
    return masks


def fit_mask(mask: Image.Image, width: int, height: int) -> torch.Tensor:
    """The mask through the photo's resize and centre crop (data.fit_to_size): (1, height, width) in [0, 1]."""
    fitted = fit_to_size(mask, width, height)
    return torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0)[None]


def to_latent_size(masks: torch.Tensor, latent_shape: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) pixel masks -> (N, 1, h, w): the subject share of each latent pixel."""
    return F.interpolate(masks, size=latent_shape, mode="area").clamp(0, 1)

