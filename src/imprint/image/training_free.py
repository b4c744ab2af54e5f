"""Generation-time subject methods (`imprint generate --with METHOD --subject DIR`): no training,
the subject comes from one of its photos (and its mask) at sampling time, on the base model or
on a finished run. `install` gives each method over a pipeline: a context manager under which
the pipeline samples as usual (self-subject-attention, freecus), or an object whose `images`
generates (diptych, which inpaints a canvas of its own)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image

from imprint.image.data import images_to_tensor, load_image_file, load_subject_images
from imprint.image.masks import fit_mask, load_masks, to_latent_size
from imprint.util.errors import ImprintError

log = logging.getLogger("imprint")

METHODS = ("self-subject-attention", "freecus", "diptych")


def own_pipeline(method: str, model: str | None, run):
    """The pipeline of a method that needs a model of its own (diptych: a FLUX Fill model), or None."""
    if method != "diptych":
        return None
    if run is not None or model is None:
        raise ImprintError("--with diptych: inpaints with a FLUX Fill model: pass it as --model (e.g. "
                           "black-forest-labs/FLUX.1-Fill-dev), without --run")
    from diffusers import FluxFillPipeline

    from imprint.families import pipeline_class_name, resolve_model
    from imprint.families.base import loading

    found = pipeline_class_name(model)
    if found != "FluxFillPipeline":
        raise ImprintError(f"--with diptych: --model {model} is a {found}; pass a FLUX Fill model (its "
                           "model_index.json names FluxFillPipeline), e.g. black-forest-labs/FLUX.1-Fill-dev")
    with loading(resolve_model(model)):
        pipe = FluxFillPipeline.from_pretrained(resolve_model(model), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def subject_masks_folder(subject: Path, masks: str | None) -> Path:
    """--subject-masks, else the subject folder's own masks/ (as `imprint toyworld subjects` writes)."""
    if masks is not None:
        return Path(masks)
    if (subject / "masks").is_dir():
        return subject / "masks"
    raise ImprintError(f"--subject {subject}: no masks/ folder in it; pass --subject-masks DIR (one mask per photo, "
                       "its file stem; make them with `imprint train --auto-masks` or any segmenter)")


def subject_name(subject: Path, given: str | None) -> str:
    """--subject-name, else the subject folder's class.txt (as `imprint toyworld subjects` writes)."""
    if given:
        return given
    if (subject / "class.txt").is_file():
        return (subject / "class.txt").read_text().strip()
    raise ImprintError(f"--with diptych: say what the subject is with --subject-name (e.g. 'bear plushie'); "
                       f"{subject} has no class.txt")


def reference_photo(subject: Path, masks: str | None, index: int, resolution: int) -> tuple[Path, Image.Image,
                                                                                              Image.Image]:
    """Photo `index` of the subject: its path, the photo at `resolution` and its mask at its own size."""
    photos = load_subject_images(subject, resolution, flag="--subject")
    if not 0 <= index < len(photos.paths):
        raise ImprintError(f"--subject-photo {index}: {subject} has {len(photos.paths)} photos (0 to "
                           f"{len(photos.paths) - 1})")
    mask = load_masks([photos.paths[index]], subject_masks_folder(subject, masks), "--subject-masks")[0]
    return photos.paths[index], photos.images[index], mask


@torch.no_grad()
def reference_latents(pipe, photo: Image.Image, mask: Image.Image, resolution: int):
    """The photo as latents the denoiser takes, and its mask at latent size."""
    vae = pipe.vae
    pixels = images_to_tensor([photo]).to(vae.device, vae.dtype)
    shift = getattr(vae.config, "shift_factor", None) or 0.0  # FLUX / SD3 latents are shifted, then scaled
    latents = (vae.encode(pixels).latent_dist.mean - shift) * vae.config.scaling_factor
    mask = to_latent_size(fit_mask(mask, resolution, resolution)[None], tuple(latents.shape[-2:]))
    return latents.float().cpu(), mask


def install(method: str, pipe, subject: str | Path, masks: str | None, index: int, resolution: int,
            weight: float | None, seed: int, name: str | None = None):
    """`method` over the pipeline; `weight` is its own weight (w_ref, lambda), None for the paper's."""
    if method not in METHODS:
        raise ImprintError(f"--with {method}: unknown; choose one of {', '.join(METHODS)}")
    subject = Path(subject)
    path, photo, mask = reference_photo(subject, masks, index, resolution)
    log.info("subject reference: %s", path)
    if method == "diptych":
        from imprint.image.diptych import Diptych

        return Diptych(pipe, load_image_file(path), mask, subject_name(subject, name), 1.3 if weight is None else weight)
    if method == "freecus":
        from diffusers import FluxPipeline

        if not isinstance(pipe, FluxPipeline):
            raise ImprintError(f"--with freecus: a method of FLUX's transformer; this model's pipeline is a "
                               f"{type(pipe).__name__}")
        from imprint.image.freecus import FreeCus, default_layers

        return FreeCus(pipe, *reference_latents(pipe, photo, mask, resolution), default_layers(pipe.transformer),
                       seed=seed)
    if getattr(pipe, "unet", None) is None:
        raise ImprintError("--with self-subject-attention: an attention processor of a UNet (SD, SDXL); this "
                           "model has a transformer")
    from imprint.image.self_subject_attention import SelfSubjectAttention

    return SelfSubjectAttention(pipe, *reference_latents(pipe, photo, mask, resolution),
                                3.0 if weight is None else weight, seed)
