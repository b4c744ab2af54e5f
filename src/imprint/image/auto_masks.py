"""--auto-masks: subject masks made by a text-prompted segmentation model, CLIPSeg (Lüddecke
and Ecker 2022) through transformers, prompted with the class name. Each photo is segmented
upright and whole; the probability map (352 x 352 for CLIPSeg) is resized to the photo's size
and thresholded. The masks are written to the run folder's masks/ as PNGs named like the
photos, so the user can inspect and fix them and pass the folder as --masks to a later run;
a resumed run reads them back instead of segmenting again."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from imprint.image.data import load_image_file
from imprint.util.errors import ImprintError
from imprint.util.files import make_folder

log = logging.getLogger("imprint")


def load_segmenter(model: str, device: str = "cpu"):
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    try:
        processor = CLIPSegProcessor.from_pretrained(model)
        network = CLIPSegForImageSegmentation.from_pretrained(model, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise ImprintError(f"--auto-mask-model {model}: cannot load a CLIPSeg model ({str(e).splitlines()[0]}); "
                           "pass a hub id such as CIDAS/clipseg-rd64-refined or a local folder with "
                           "model.safetensors") from e
    return processor, network.to(device).eval()


@torch.no_grad()
def segment(processor, network, image: Image.Image, prompt: str, threshold: float) -> Image.Image:
    """One photo's mask ('L', 255 = subject) at the photo's size."""
    inputs = processor(text=[prompt], images=[image], return_tensors="pt", padding=True)
    inputs = {k: v.to(network.device) for k, v in inputs.items()}
    logits = network(**inputs).logits
    probability = torch.sigmoid(logits.reshape(1, 1, *logits.shape[-2:]).float())
    probability = F.interpolate(probability, size=(image.height, image.width), mode="bilinear", align_corners=False)
    subject = (probability[0, 0] > threshold).cpu().numpy()
    return Image.fromarray(np.where(subject, 255, 0).astype(np.uint8), "L")


def make_masks(photos: list[Path], folder: Path, model: str, prompt: str, threshold: float,
               device: str = "cpu") -> Path:
    """Masks of every photo in `folder` (those already there are kept); the folder."""
    todo = [p for p in photos if not (folder / f"{p.stem}.png").is_file()]
    if not todo:
        log.info("auto masks: %d masks already in %s", len(photos), folder)
        return folder
    make_folder(folder, "--auto-masks")
    processor, network = load_segmenter(model, device)
    empty = []
    for photo in todo:
        mask = segment(processor, network, load_image_file(photo), prompt, threshold)
        if not np.asarray(mask).any():
            empty.append(photo.name)
            continue
        partial = folder / f".{photo.stem}.png.partial"
        mask.save(partial, format="PNG")
        partial.replace(folder / f"{photo.stem}.png")
    del network
    if empty:
        raise ImprintError(f"--auto-masks: {model} found no {prompt!r} in {', '.join(empty)} at threshold "
                           f"{threshold:g}; lower --auto-mask-threshold, change --auto-mask-prompt, or draw "
                           f"those masks and pass --masks (the others are in {folder})")
    log.info("auto masks: %d masks made with %s (prompt %r, threshold %g) in %s; inspect them there",
             len(todo), model, prompt, threshold, folder)
    return folder
