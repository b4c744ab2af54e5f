"""FLUX.1 (Black Forest Labs): a rectified-flow transformer on 2x2-packed 16-channel latents,
conditioned on T5 token embeddings, CLIP's pooled embedding and (guidance-distilled models) a
guidance value.

As diffusers' FLUX pipeline and LoRA script: the CLIP text encoder is the only one a method may
train (T5 stays frozen; its encodings are made once per prompt and T5 is freed), LoRA targets
the attention projections and the MLPs of both block kinds, the result is the file
`FluxPipeline.load_lora_weights` reads. Batches keep latents unpacked (B, C, H, W), so masks
and every loss term see images; `predict` packs them for the transformer and unpacks its output.
"""

from __future__ import annotations

import torch

from imprint.families.base import register_family
from imprint.families.flow import FlowMatchingFamily

CLIP_LENGTH = 77


@register_family
class FluxFamily(FlowMatchingFamily):
    name = "flux"
    pipeline_class_names = ("FluxPipeline",)
    diffusers_pipeline = "FluxPipeline"
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder",)
    cached_text_encoders = ("text_encoder_2",)  # T5
    patch_size = 2
    # diffusers' train_dreambooth_lora_flux.py's default targets
    lora_targets = {
        "transformer": ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                        "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                        "ff_context.net.2", "proj_mlp", "proj_out"],
        "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"],
    }
    kohya_prefixes = {"transformer": "lora_transformer_", "text_encoder": "lora_te1_"}
    kohya_model_version = "flux1"

    part_names = ("transformer", "text_encoder", "text_encoder_2", "vae")

    def __init__(self, model: str):
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        self.load_parts(model, {"tokenizer": CLIPTokenizer, "tokenizer_2": T5TokenizerFast,
                                "text_encoder": CLIPTextModel, "text_encoder_2": T5EncoderModel, "vae": AutoencoderKL,
                                "transformer": FluxTransformer2DModel,
                                "noise_scheduler": FlowMatchEulerDiscreteScheduler})
        # the pipeline's default length (512), or the tokenizer's if shorter, so training and sampling agree
        self.max_sequence_length = min(512, self.tokenizer_2.model_max_length)
        self.fingerprint = self.parts_fingerprint(self)

    # --- conditioning ------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """(N, 77 + T5 length): CLIP's ids, then T5's."""
        clip = self.tokenizer(prompts, padding="max_length", max_length=CLIP_LENGTH, truncation=True,
                              return_tensors="pt").input_ids
        t5 = self.tokenizer_2(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                              return_tensors="pt").input_ids
        return torch.cat([clip, t5], dim=1)

    def pooled_text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(tokens[:, :CLIP_LENGTH].to(self.text_encoder.device)).pooler_output

    def encode_prompts(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": self.t5_embeddings(self.text_encoder_2, tokens[:, CLIP_LENGTH:]),
                "pooled_prompt_embeds": self.pooled_text_embeddings(tokens)}

    def negative_encoding(self) -> dict[str, torch.Tensor]:
        return {}  # FLUX.1's guidance is embedded, not classifier-free: no negative prompt

    # --- the objective -----------------------------------------------------------------
    def predict(self, noisy, timesteps, conditioning):
        from diffusers import FluxPipeline

        batch, channels, height, width = noisy.shape
        packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
        embeds = conditioning["prompt_embeds"]
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, embeds.dtype)
        text_ids = torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=embeds.dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), self.settings.flux_guidance, device=noisy.device, dtype=torch.float32)
        out = self.transformer(hidden_states=packed, timestep=(timesteps / 1000).to(noisy.dtype), guidance=guidance,
                               pooled_projections=conditioning["pooled_prompt_embeds"], encoder_hidden_states=embeds,
                               txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, height * self.vae_scale_factor, width * self.vae_scale_factor,
                                            self.vae_scale_factor)

    # --- sampling, loading, files --------------------------------------------------------
    fingerprint_parts = ("transformer", "text_encoder", "text_encoder_2")
