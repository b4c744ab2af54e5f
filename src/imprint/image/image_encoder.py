"""Frozen image encoders: one feature vector per image, for methods that read photos.

- A transformers CLIP vision model (hub id or folder) gives its projected image embedding
  (`image_embeds`, not normalised: what open_clip's `encode_image` gives the DisenBooth code,
  whose identity-irrelevant branch reads it).
- Any other transformers vision model, such as DINO (`facebook/dino-vits16`, HiFi Tuner's choice
  of the reference photo), gives its CLS token.
- `toyworld` gives the toy world's metric backend's image features (the toy evaluator's pooled
  trunk: the toy world has no CLIP, its evaluator is the one model that has learned to see it),
  found like every backend, so this module imports no world.
"""

from __future__ import annotations

import torch
from PIL import Image

from imprint.util.errors import ImprintError

TOYWORLD = "toyworld"
CLIP_TYPES = ("clip", "clip_vision_model")


class ImageEncoder:
    """`encode(images)` -> (N, dim) float32 features on `device`, without gradients."""

    def __init__(self, name: str, flag: str, device: str | torch.device = "cpu"):
        self.name, self.device = name, torch.device(device)
        if name == TOYWORLD:
            from imprint.evaluate.backends import make_backend

            self.backend = make_backend(name)
            self.dim = self.backend.image_feature_dim
            return
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

        try:
            self.is_clip = AutoConfig.from_pretrained(name).model_type in CLIP_TYPES
            self.processor = AutoImageProcessor.from_pretrained(name)
            if self.is_clip:
                self.model = CLIPVisionModelWithProjection.from_pretrained(name, use_safetensors=True)
                self.dim = self.model.config.projection_dim
            else:
                self.model = AutoModel.from_pretrained(name, use_safetensors=True, add_pooling_layer=False)
                self.dim = self.model.config.hidden_size
        except (OSError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ImprintError(f"{flag} {name}: cannot load an image encoder ({first}); pass a hub id such as "
                               f"openai/clip-vit-large-patch14 or facebook/dino-vits16, a local folder with "
                               f"model.safetensors, or '{TOYWORLD}'") from e
        self.model = self.model.to(self.device).eval()

    @torch.no_grad()
    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        if self.name == TOYWORLD:
            return self.backend.image_features(images).float().to(self.device)
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(self.device, self.model.dtype))
        return (out.image_embeds if self.is_clip else out.last_hidden_state[:, 0]).float()
