"""Stable Diffusion 3 / 3.5 (Esser et al. 2024, arXiv 2403.03206): a rectified-flow MM-DiT on
16-channel latents, conditioned on two CLIP encoders (penultimate hidden states joined and
zero-padded to T5's width, then T5's tokens after them; both pooled projections joined).

As diffusers' SD3 pipeline and LoRA script: the CLIPs are what a method may train, T5 stays
frozen (encoded once per prompt, then freed); LoRA targets the joint attention's projections
of both streams; the negative prompt is the empty prompt's encoding (no zeros).
"""

from __future__ import annotations

import torch

from imprint.families.base import register_family
from imprint.families.flow import FlowMatchingFamily

CLIP_LENGTH = 77


@register_family
class StableDiffusion3Family(FlowMatchingFamily):
    name = "sd3"
    pipeline_class_names = ("StableDiffusion3Pipeline",)
    diffusers_pipeline = "StableDiffusion3Pipeline"
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    tokenizer_names = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
    cached_text_encoders = ("text_encoder_3",)  # T5
    # diffusers' train_dreambooth_lora_sd3.py's default targets
    lora_targets = {
        "transformer": ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k",
                        "attn.to_out.0", "attn.to_q", "attn.to_v"],
        "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"],
        "text_encoder_2": ["q_proj", "k_proj", "v_proj", "out_proj"],
    }
    # ComfyUI reads the transformer's diffusers paths under "lora_transformer_" (OneTrainer's layout)
    kohya_prefixes = {"transformer": "lora_transformer_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}

    part_names = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")

    def __init__(self, model: str):
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        self.load_parts(model, {"tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer, "tokenizer_3": T5TokenizerFast,
                                "text_encoder": CLIPTextModelWithProjection,
                                "text_encoder_2": CLIPTextModelWithProjection, "text_encoder_3": T5EncoderModel,
                                "vae": AutoencoderKL, "transformer": SD3Transformer2DModel,
                                "noise_scheduler": FlowMatchEulerDiscreteScheduler})
        self.max_sequence_length = min(256, self.tokenizer_3.model_max_length)  # the pipeline's default
        self.fingerprint = self.parts_fingerprint(self)

    # --- conditioning ------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """(N, 77 + 77 + T5 length): the two CLIPs' ids, then T5's."""
        ids = [tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
               for tokenizer, length in ((self.tokenizer, CLIP_LENGTH), (self.tokenizer_2, CLIP_LENGTH),
                                         (self.tokenizer_3, self.max_sequence_length))]
        return torch.cat(ids, dim=1)

    def clip_embeddings(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], []
        for i, encoder in enumerate((self.text_encoder, self.text_encoder_2)):
            out = encoder(tokens[:, i * CLIP_LENGTH:(i + 1) * CLIP_LENGTH].to(encoder.device), output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        return torch.cat(hidden, dim=-1), torch.cat(pooled, dim=-1)

    def pooled_text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip_embeddings(tokens)[1]

    def encode_prompts(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        clip, pooled = self.clip_embeddings(tokens)
        t5 = self.t5_embeddings(self.text_encoder_3, tokens[:, 2 * CLIP_LENGTH:]).to(clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"prompt_embeds": torch.cat([clip, t5], dim=-2), "pooled_prompt_embeds": pooled}

    # --- the objective -----------------------------------------------------------------
    def predict(self, noisy, timesteps, conditioning):
        return self.transformer(hidden_states=noisy, timestep=timesteps.to(noisy.dtype),
                                encoder_hidden_states=conditioning["prompt_embeds"],
                                pooled_projections=conditioning["pooled_prompt_embeds"], return_dict=False)[0]

    # --- sampling, loading, files --------------------------------------------------------
    fingerprint_parts = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
