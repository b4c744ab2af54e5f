"""The toy world's text-prompted segmenter: a small CLIPSeg (transformers'
CLIPSegForImageSegmentation, the architecture of CIDAS/clipseg-rd64-refined) trained from scratch
on fresh renders and their true masks, prompted with the shape's name, as --auto-masks prompts
with the class name. No pre-trained segmenter knows this world (as no CLIP does: the evaluator
stands in for those), so the mask methods' automatic-mask rows use this one, loaded through
--auto-mask-model like any CLIPSeg folder. Shipped in toyworld/segmenter/; `imprint toyworld
train-segmenter` makes it again (seeded).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imprint.toyworld.render import random_scene, render_with_mask

log = logging.getLogger("imprint")

SEGMENTER_DIR = Path(__file__).with_name("segmenter")


def _batch(processor, rng: random.Random, count: int):
    scenes = [random_scene(rng) for _ in range(count)]
    rendered = [render_with_mask(scene, rng.randrange(2**31)) for scene in scenes]
    inputs = processor(text=[s.shape for s in scenes], images=[image for image, _ in rendered],
                       return_tensors="pt", padding=True)
    masks = torch.from_numpy(np.stack([np.asarray(mask) > 127 for _, mask in rendered])).float()
    return inputs, masks


def _logits(network, inputs, size) -> torch.Tensor:
    side = network.config.vision_config.image_size  # CLIPSeg's decoder draws at its input size
    logits = network(**inputs).logits.reshape(-1, 1, side, side)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[:, 0]


def mask_iou(folder: str | Path = SEGMENTER_DIR, count: int = 256, seed: int = 999, threshold: float = 0.4) -> float:
    """Mean IoU of the thresholded masks with the true ones on fresh renders (as --auto-masks thresholds)."""
    from imprint.image.auto_masks import load_segmenter

    processor, network = load_segmenter(str(folder))
    inputs, masks = _batch(processor, random.Random(seed), count)
    with torch.no_grad():
        predicted = torch.sigmoid(_logits(network, inputs, masks.shape[-2:])) > threshold
    truth = masks > 0.5
    return float(((predicted & truth).sum((1, 2)) / (predicted | truth).sum((1, 2)).clamp(min=1)).mean())


def build_segmenter(seed: int = 0):
    """CLIPSeg at the toy world's size, randomly initialised: 64 px in patches of 4 (a 16 x 16
    grid, the latents' own), 48 wide, 3 vision layers."""
    from imprint.tiny import build_clipseg

    return build_clipseg(seed, image_size=64, patch_size=4, width=48, vision_layers=3, reduce_dim=32)


def train_segmenter(output: str | Path = SEGMENTER_DIR, steps: int = 3000, batch_size: int = 32, seed: int = 0,
                    lr: float = 2e-3) -> Path:
    output = Path(output)
    processor, network = build_segmenter(seed)
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    rng, start = random.Random(seed), time.time()
    for step in range(1, steps + 1):
        inputs, masks = _batch(processor, rng, batch_size)
        loss = F.binary_cross_entropy_with_logits(_logits(network, inputs, masks.shape[-2:]), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            log.info("segmenter step %d/%d: loss %.4f (%.0f s)", step, steps, float(loss.detach()), time.time() - start)
    network.eval().save_pretrained(output, safe_serialization=True)
    processor.save_pretrained(output)
    log.info("toy segmenter written to %s: mask IoU %.3f on fresh renders", output, mask_iou(output))
    return output
