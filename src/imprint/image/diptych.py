"""Diptych prompting (Shin et al., CVPR 2025, arXiv 2411.15466; the authors' DiptychPrompting):
subject-driven generation as inpainting. A diptych's left panel is the subject photo on white
(background removed by its mask), the right panel is masked; the prompt describes both panels;
in every attention layer the post-softmax weights from the right panel's image queries to the
left panel's image keys are multiplied by lambda = 1.3 (not renormalised), so the new panel
copies the subject from the left. The right panel, less its margin, is the image.

Taken from the authors' code: the prompt template, lambda 1.3 on every layer and step (both
block kinds, text tokens untouched), the 8 px margin around each panel, the white background.
Chosen: the inpainting model is FLUX.1 Fill (diffusers' FluxFillPipeline; the authors used
alimama's inpainting ControlNet with true CFG 3.5 in a pipeline of their own), with Fill's own
guidance; the photo keeps its aspect (centre crop) where theirs is stretched; the subject mask
comes from the subject folder (theirs from Grounding DINO + SAM).
"""

from __future__ import annotations

import torch
from PIL import Image

from imprint.image.flux_attention import FluxProcessor, flux_attention_modules, plain_attention

TEMPLATE = ("A diptych with two side-by-side images of same {subject}. On the left, a photo of {subject}. "
            "On the right, replicate this {subject} exactly but as {target}")


def diptych_prompt(subject: str, target: str) -> str:
    return TEMPLATE.format(subject=subject, target=target)


def diptych_canvas(photo: Image.Image, mask: Image.Image, panel: int) -> tuple[Image.Image, Image.Image]:
    """(image, inpainting mask), 2 panel x panel: the subject on white at the left, the right to fill."""
    from imprint.image.data import resize_center_crop

    photo = resize_center_crop(photo.convert("RGB"), panel)
    mask = resize_center_crop(mask.convert("L"), panel)
    white = Image.new("RGB", (panel, panel), "white")
    canvas = Image.new("RGB", (2 * panel, panel), "black")
    canvas.paste(Image.composite(photo, white, mask), (0, 0))
    fill = Image.new("L", (2 * panel, panel), 0)
    fill.paste(255, (panel, 0, 2 * panel, panel))
    return canvas, fill


def enhanced_attention(weight: float, grid: tuple[int, int]):
    """Attention whose right-panel-query to left-panel-key weights are multiplied by `weight` after
    the softmax; `grid` is the image's token rows and columns (both panels)."""
    rows, cols = grid
    column = torch.arange(cols).repeat(rows)  # each image token's column, row-major
    right, left = column >= cols // 2, column < cols // 2

    def attend(query, key, value, text):
        if weight == 1.0:
            return plain_attention(query, key, value, text)
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))
        probabilities = torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
        factor = torch.ones(probabilities.shape[-2:], device=q.device, dtype=probabilities.dtype)
        image = factor[text:, text:]
        image[right.to(q.device)[:, None] & left.to(q.device)[None, :]] = weight
        return (probabilities * factor @ v).transpose(1, 2)
    return attend


class Diptych:
    """Generates with a FluxFillPipeline: `images(prompt, ...)` builds, fills and crops the diptych."""

    def __init__(self, pipe, photo: Image.Image, mask: Image.Image, subject: str, weight: float = 1.3,
                 margin: int = 8):
        self.pipe, self.photo, self.mask, self.subject = pipe, photo, mask, subject
        self.weight, self.margin = weight, margin
        self.saved = None

    def images(self, prompt: str, resolution: int, generators: list, steps: int, guidance: float | None) -> list:
        panel = resolution + 2 * self.margin
        canvas, fill = diptych_canvas(self.photo, self.mask, panel)
        tokens = (panel // (self.pipe.vae_scale_factor * 2), 2 * panel // (self.pipe.vae_scale_factor * 2))
        text = diptych_prompt(self.subject, prompt)
        attention = enhanced_attention(self.weight, tokens)
        saved = dict(self.pipe.transformer.attn_processors)
        state = {"text": 0}
        for _, module in flux_attention_modules(self.pipe.transformer):
            module.set_processor(FluxProcessor(attention, lambda: state["text"]))
        hook = self.pipe.transformer.register_forward_pre_hook(
            lambda m, a, kw: state.update(text=kw["encoder_hidden_states"].shape[1]), with_kwargs=True)
        try:
            extra = {} if guidance is None else {"guidance_scale": guidance}
            out = self.pipe(prompt=[text] * len(generators), image=canvas, mask_image=fill, height=panel,
                            width=2 * panel, num_inference_steps=steps, generator=generators, **extra).images
        finally:
            hook.remove()
            self.pipe.transformer.set_attn_processor(saved)
        m = self.margin
        return [image.crop((panel + m, m, 2 * panel - m, panel - m)) for image in out]
