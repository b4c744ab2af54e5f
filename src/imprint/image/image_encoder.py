"""Frozen image encoders: one feature vector per photo (DisenBooth's identity-irrelevant
branch reads them). A transformers CLIP vision model by hub id or folder gives its projected
image embedding (`image_embeds`, not normalised: what open_clip's `encode_image` gives the
DisenBooth code); `toyworld` gives the toy world's metric backend's image features (the
toy evaluator's pooled trunk: the toy world has no CLIP, its evaluator is the one model that
has learned to see it), found like every backend, so this module imports no world."""

from __future__ import annotations

import torch
from PIL import Image

from imprint.util.errors import ImprintError

TOYWORLD = "toyworld"


class ImageEncoder:
    """`encode(images)` -> (N, dim) float32 features on `device`, without gradients."""

    def __init__(self, name: str, flag: str, device: str | torch.device = "cpu"):
        self.name, self.device = name, torch.device(device)
        if name == TOYWORLD:
            from imprint.evaluate.backends import make_backend

            self.backend = make_backend(name)
            self.dim = self.backend.image_feature_dim
            return
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        try:
            self.processor = CLIPImageProcessor.from_pretrained(name)
            self.model = CLIPVisionModelWithProjection.from_pretrained(name, use_safetensors=True)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ImprintError(f"{flag} {name}: cannot load a CLIP vision model ({first}); pass a hub id such as "
                               "openai/clip-vit-large-patch14, a local folder with model.safetensors, or '{TOYWORLD}'") from e
        self.model = self.model.to(self.device).eval()
        self.dim = self.model.config.projection_dim

    @torch.no_grad()
    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        if self.name == TOYWORLD:
            return self.backend.image_features(images).float().to(self.device)
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        return self.model(pixel_values=pixels.to(self.device, self.model.dtype)).image_embeds.float()
