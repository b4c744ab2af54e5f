"""Generation-time subject methods (`imprint generate --with METHOD --subject DIR`): no training,
the subject comes from its photos (and their masks) at sampling time, on the base model or on a
finished run. One entry per method: what it needs and the context manager that installs it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from imprint.image.data import images_to_tensor, load_subject_images
from imprint.image.masks import fit_mask, load_masks, to_latent_size
from imprint.util.errors import ImprintError

log = logging.getLogger("imprint")

METHODS = ("self-subject-attention",)


def subject_masks_folder(subject: Path, masks: str | None) -> Path:
    """--subject-masks, else the subject folder's own masks/ (as `imprint toyworld subjects` writes)."""
    if masks is not None:
        return Path(masks)
    if (subject / "masks").is_dir():
        return subject / "masks"
    raise ImprintError(f"--subject {subject}: no masks/ folder in it; pass --subject-masks DIR (one mask per photo, "
                       "its file stem; make them with `imprint train --auto-masks` or any segmenter)")


@torch.no_grad()
def reference_latents(pipe, subject: str | Path, masks: str | None, index: int, resolution: int):
    """Photo `index` of the subject as latents the denoiser takes, and its mask at latent size."""
    subject = Path(subject)
    photos = load_subject_images(subject, resolution, flag="--subject")
    if not 0 <= index < len(photos.paths):
        raise ImprintError(f"--subject-photo {index}: {subject} has {len(photos.paths)} photos (0 to "
                           f"{len(photos.paths) - 1})")
    mask_image = load_masks([photos.paths[index]], subject_masks_folder(subject, masks), "--subject-masks")[0]
    vae = pipe.vae
    pixels = images_to_tensor([photos.images[index]]).to(vae.device, vae.dtype)
    latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    mask = to_latent_size(fit_mask(mask_image, resolution, resolution)[None], tuple(latents.shape[-2:]))
    log.info("subject reference: %s (mask covers %.0f%%)", photos.paths[index].name, 100 * mask.mean().item())
    return latents.float().cpu(), mask


def install(method: str, pipe, subject: str | Path, masks: str | None, index: int, resolution: int,
            weight: float, seed: int):
    """The context manager under which the pipeline generates with `method`."""
    if method == "self-subject-attention":
        if getattr(pipe, "unet", None) is None:
            raise ImprintError("--with self-subject-attention: an attention processor of a UNet (SD, SDXL); this "
                               "model has a transformer")
        from imprint.image.self_subject_attention import SelfSubjectAttention

        latents, mask = reference_latents(pipe, subject, masks, index, resolution)
        return SelfSubjectAttention(pipe, latents, mask, weight, seed)
    raise ImprintError(f"--with {method}: unknown; choose one of {', '.join(METHODS)}")
