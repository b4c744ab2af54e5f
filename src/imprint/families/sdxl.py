"""Stable Diffusion XL: two CLIP text encoders whose penultimate hidden states are joined, the
second one's pooled projection and the micro-conditioning time ids as extra UNet inputs.

The VAE, the noise schedule and the objective are SD's (epsilon or v, DDPM timesteps), so this
family inherits them and changes the parts and the conditioning. Choices:
- time ids (original size, crop top-left, target size) are the latent's own size, crop (0, 0):
  photos are resized to the training resolution before caching, and these are the ids the SDXL
  pipeline uses at generation when none are given (diffusers' script records each photo's size
  before resizing and its crop; with square centre crops of photos near the size that matters
  little, and it keeps the conditioning per bucket rather than per photo).
- the negative prompt at sampling is zeros where the model's `force_zeros_for_empty_prompt` says
  so (SDXL base), as the pipeline does.
"""

from __future__ import annotations

import torch

from imprint.families.base import model_index, register_family
from imprint.families.sd import StableDiffusionFamily


def text_conditioning(text_encoders, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeds, pooled embeds) as SDXL's pipeline computes them: each encoder's
    penultimate hidden states joined on the feature axis; the pooled projection of the last
    encoder that has one. `tokens` is (N, encoders, length)."""
    hidden, pooled = [], None
    for i, encoder in enumerate(text_encoders):
        out = encoder(tokens[:, i].to(encoder.device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds first
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


@register_family
class StableDiffusionXLFamily(StableDiffusionFamily):
    """The parts of an SDXL model; SD's objective."""

    name = "sdxl"
    pipeline_class_names = ("StableDiffusionXLPipeline",)
    diffusers_pipeline = "StableDiffusionXLPipeline"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    tokenizer_names = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
    embedding_file_keys = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}  # A1111 / ComfyUI's SDXL layout
    default_resolution = 1024
    lora_targets = {
        "unet": ["to_q", "to_k", "to_v", "to_out.0"],
        "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"],
        "text_encoder_2": ["q_proj", "k_proj", "v_proj", "out_proj"],
    }
    # kohya's SDXL layout: te1 is CLIP ViT-L, te2 OpenCLIP ViT-bigG
    kohya_prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    kohya_model_version = "sdxl_base_v1-0"
    ddim_editing = False  # its tools read SD's single-encoder prompt embeddings

    part_names = ("unet", "text_encoder", "text_encoder_2", "vae")

    def __init__(self, model: str):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        self.load_parts(model, {"tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer,
                                "text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection,
                                "vae": AutoencoderKL, "unet": UNet2DConditionModel, "noise_scheduler": DDPMScheduler})
        self.force_zeros = bool(model_index(self.model).get("force_zeros_for_empty_prompt", True))
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.fingerprint = self.parts_fingerprint(self)

    # --- conditioning ------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """(N, 2, 77): each prompt through both tokenizers (both pad to 77)."""
        ids = [tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids for tokenizer in (self.tokenizer, self.tokenizer_2)]
        return torch.stack(ids, dim=1)

    def text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return text_conditioning((self.text_encoder, self.text_encoder_2), tokens)[0]

    def encode_prompts(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        embeds, pooled = text_conditioning((self.text_encoder, self.text_encoder_2), tokens)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def pooled_text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return text_conditioning((self.text_encoder, self.text_encoder_2), tokens)[1]

    def pipeline_encoding(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encode_prompts(tokens)  # the pipeline's names: prompt_embeds, pooled_prompt_embeds

    def negative_encoding(self) -> dict[str, torch.Tensor]:
        empty = super().negative_encoding()
        return {k: torch.zeros_like(v) for k, v in empty.items()} if self.force_zeros else empty

    # --- the objective -----------------------------------------------------------------
    def time_ids(self, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(N, 6): original size, crop top-left, target size: the latent's size in pixels, crop (0, 0)."""
        height, width = latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor
        ids = torch.tensor([height, width, 0, 0, height, width], dtype=dtype, device=latents.device)
        return ids.expand(latents.shape[0], -1)

    def predict(self, noisy, timesteps, conditioning):
        embeds = conditioning["prompt_embeds"]
        added = {"text_embeds": conditioning["pooled_prompt_embeds"], "time_ids": self.time_ids(noisy, embeds.dtype)}
        return self.unet(noisy, timesteps, embeds, added_cond_kwargs=added, return_dict=False)[0]

    # --- sampling, loading, files --------------------------------------------------------
    fingerprint_parts = ("unet", "text_encoder", "text_encoder_2")
    load_options = {}

    def pipeline_options(self) -> dict:
        return {"force_zeros_for_empty_prompt": self.force_zeros}
