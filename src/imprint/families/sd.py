"""Stable Diffusion 1.x / 2.x: load the parts, encode prompts and images, noise and target,
and build the diffusers pipeline that samples with whatever is being trained."""

from __future__ import annotations

import logging

import torch

from imprint.families.base import Family, register_family
from imprint.util.errors import ImprintError

log = logging.getLogger("imprint")

@register_family
class StableDiffusionFamily(Family):
    """The parts of an SD 1.x/2.x model and the maths of its training objective."""

    name = "sd"
    pipeline_class_names = ("StableDiffusionPipeline",)
    diffusers_pipeline = "StableDiffusionPipeline"
    denoiser_name = "unet"
    lora_targets = {
        "unet": ["to_q", "to_k", "to_v", "to_out.0"],
        "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"],
    }
    # the ResNet blocks' 3x3 convolutions (as LyCORIS' LoCon)
    lora_conv_targets = {"unet": ["conv1", "conv2"]}
    kohya_prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    ddim_editing = True

    @classmethod
    def from_pipeline(cls, pipe, model: str = "(in memory)") -> "StableDiffusionFamily":
        """The family over a pipeline's parts as they are (trained from scratch, not loaded)."""
        from diffusers import DDPMScheduler

        family = cls.__new__(cls)
        family.model = model
        family.tokenizer, family.text_encoder, family.vae, family.unet = (
            pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet)
        family.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        family.prediction_type = family.noise_scheduler.config.prediction_type
        family.fingerprint = cls.parts_fingerprint(pipe)
        return family

    part_names = ("unet", "text_encoder", "vae")

    def __init__(self, model: str):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.load_parts(model, {"tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModel, "vae": AutoencoderKL,
                                "unet": UNet2DConditionModel, "noise_scheduler": DDPMScheduler})
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.fingerprint = self.parts_fingerprint(self)

    # --- conditioning ------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids

    def text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(tokens.to(self.text_encoder.device))[0]

    def encode_prompts(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": self.text_embeddings(tokens)}

    def pipeline_encoding(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": self.text_embeddings(tokens)}

    def pooled_text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(tokens.to(self.text_encoder.device)).pooler_output

    # --- images and the objective -------------------------------------------------------
    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One draw from the cached posterior, scaled as the UNet expects (as the VAE would)."""
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return (mean + std * eps) * self.vae.config.scaling_factor

    def sample_timesteps(self, n: int, generator: torch.Generator, latent_shape=None) -> torch.Tensor:
        return torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (n,),
                             generator=generator).long()

    def noisy_input_and_target(self, latents, noise, timesteps):
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ImprintError(f"scheduler prediction_type {self.prediction_type!r} is not supported for training")
        return noisy, target

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        alphas = self.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        return alphas / (1 - alphas)

    def predicted_x0(self, noisy, prediction, timesteps):
        alphas = self.noise_scheduler.alphas_cumprod.to(noisy.device)[timesteps.to(noisy.device)]
        alpha = alphas.sqrt().reshape(-1, 1, 1, 1).to(noisy.dtype)
        sigma = (1 - alphas).sqrt().reshape(-1, 1, 1, 1).to(noisy.dtype)
        if self.prediction_type == "v_prediction":
            return alpha * noisy - sigma * prediction
        return (noisy - sigma * prediction) / alpha

    def decode_latents(self, latents):
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]

    def predict(self, noisy, timesteps, conditioning):
        return self.unet(noisy, timesteps, conditioning["prompt_embeds"], return_dict=False)[0]

    # --- sampling, loading, files --------------------------------------------------------
    fingerprint_parts = ("unet", "text_encoder")
    load_options = {"safety_checker": None, "requires_safety_checker": False}  # no safety checker

    def pipeline_options(self) -> dict:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
