"""Stable Diffusion 1.x / 2.x: load the parts, encode prompts and images, noise and target,
and build the diffusers pipeline that samples with whatever is being trained."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import re
from pathlib import Path

import torch

from imprint.errors import ImprintError

log = logging.getLogger("imprint")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# config keys that name a file or a version, not the architecture
_NON_ARCH_KEYS = {"_name_or_path", "_diffusers_version", "_class_name", "transformers_version",
                  "_commit_hash", "torch_dtype", "dtype", "architectures", "_use_default_values"}


def resolve_model(model: str, flag: str = "--model") -> str:
    """A local diffusers folder (made absolute) or a hub id; anything else is a clear error."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ImprintError(
                f"{flag} {model}: no model_index.json in this folder; pass a diffusers model folder "
                "(saved with save_pretrained) or a hub id"
            )
        return str(path.resolve())
    if HUB_ID.match(model) and not model.startswith((".", "~")):
        return model
    raise ImprintError(
        f"{flag} {model}: path not found; pass a local diffusers model folder or a hub id "
        "such as stable-diffusion-v1-5/stable-diffusion-v1-5"
    )


@contextlib.contextmanager
def _loading(model: str, flag: str = "--model"):
    try:
        yield
    except ImprintError:
        raise
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImprintError(
            f"{flag} {model}: could not load the model ({first}); check the path or hub id "
            "and, for a hub id, the network or the HF cache"
        ) from e


def load_pipeline(model: str, dtype: torch.dtype = torch.float32):
    """The base model as a diffusers StableDiffusionPipeline, without the safety checker."""
    from diffusers import StableDiffusionPipeline

    model = resolve_model(model)
    with _loading(model):
        pipe = StableDiffusionPipeline.from_pretrained(
            model, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False,
            use_safetensors=True,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def architecture_fingerprint(unet_config: dict, text_config: dict) -> str:
    """Hash of the UNet and text-encoder architecture: runs are tied to it, not to a path."""
    clean = {
        "unet": {k: v for k, v in sorted(unet_config.items()) if k not in _NON_ARCH_KEYS},
        "text_encoder": {k: v for k, v in sorted(text_config.items()) if k not in _NON_ARCH_KEYS
                         and not isinstance(v, dict)},
    }
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StableDiffusionFamily:
    """The parts of an SD 1.x/2.x model and the maths of its training objective."""

    name = "sd"
    denoiser_name = "unet"
    # PEFT target modules for LoRA-type methods, per trainable part
    lora_targets = {
        "unet": ["to_q", "to_k", "to_v", "to_out.0"],
        "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"],
    }
    # added with --lora-targets attention+conv: the ResNet blocks' 3x3 convolutions
    lora_conv_targets = {"unet": ["conv1", "conv2"]}

    def __init__(self, model: str):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.model = resolve_model(model)
        with _loading(self.model):
            self.tokenizer = CLIPTokenizer.from_pretrained(self.model, subfolder="tokenizer")
            self.text_encoder = CLIPTextModel.from_pretrained(
                self.model, subfolder="text_encoder", use_safetensors=True)
            self.vae = AutoencoderKL.from_pretrained(
                self.model, subfolder="vae", use_safetensors=True)
            self.unet = UNet2DConditionModel.from_pretrained(
                self.model, subfolder="unet", use_safetensors=True)
            self.noise_scheduler = DDPMScheduler.from_pretrained(self.model, subfolder="scheduler")
        for part in (self.text_encoder, self.vae, self.unet):
            part.requires_grad_(False)
            part.eval()
        self.fingerprint = architecture_fingerprint(
            dict(self.unet.config), self.text_encoder.config.to_dict())

    # --- parts -------------------------------------------------------------------------
    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        parts = {"unet": self.unet, "text_encoder": self.text_encoder, "vae": self.vae}
        return {name: part for name, part in parts.items() if part is not None}

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    def to(self, device, frozen_dtype: torch.dtype, trained: set[str]) -> None:
        """Frozen parts in the compute dtype (saves memory), trained parts stay float32."""
        for name, module in self.modules.items():
            module.to(device, dtype=torch.float32 if name in trained else frozen_dtype)

    def enable_gradient_checkpointing(self, trained: set[str]) -> None:
        if "unet" in trained:
            self.unet.enable_gradient_checkpointing()
        if "text_encoder" in trained:
            self.text_encoder.gradient_checkpointing_enable()

    # --- encoding ----------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids

    def encode_prompts(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(self.text_encoder.device))[0]

    @torch.no_grad()
    def encode_for_sampling(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(prompt, empty negative prompt) embeddings, so sampling needs no text encoder."""
        empty = self.encode_prompts(self.tokenize([""]))
        return [(self.encode_prompts(self.tokenize([p])), empty) for p in prompts]

    def release_encoders(self, keep_text_encoder: bool) -> None:
        """Free what the caches made redundant: the VAE encoder always (sampling only decodes),
        the text encoder when it is frozen (its outputs are cached). Saves ~0.6 GB on SD1.5."""
        self.vae.encoder = None
        self.vae.quant_conv = None
        if not keep_text_encoder:
            self.text_encoder = None
        gc.collect()

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels in [-1, 1] -> the VAE posterior (mean, std), unscaled, float32 on the CPU."""
        means, stds = [], []
        for chunk in pixels.split(batch_size):
            dist = self.vae.encode(chunk.to(self.vae.device, self.vae.dtype)).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
        return torch.cat(means), torch.cat(stds)

    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One draw from the cached posterior, scaled as the UNet expects (as the VAE would)."""
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return (mean + std * eps) * self.vae.config.scaling_factor

    # --- objective ---------------------------------------------------------------------
    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (n,),
                             generator=generator).long()

    def noisy_input_and_target(self, latents, noise, timesteps):
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ImprintError(f"scheduler prediction_type {kind!r} is not supported for training")
        return noisy, target

    def predict(self, noisy, timesteps, prompt_embeds):
        return self.unet(noisy, timesteps, prompt_embeds, return_dict=False)[0]

    # --- sampling with the parts being trained -------------------------------------------
    def pipeline(self):
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # --- the LoRA file diffusers loads ----------------------------------------------------
    @staticmethod
    def save_lora(folder: Path, layers: dict[str, dict], adapter_configs: dict[str, dict]) -> None:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(
            folder,
            unet_lora_layers=layers.get("unet"),
            text_encoder_lora_layers=layers.get("text_encoder"),
            unet_lora_adapter_metadata=adapter_configs.get("unet"),
            text_encoder_lora_adapter_metadata=adapter_configs.get("text_encoder"),
        )
