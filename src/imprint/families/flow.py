"""Rectified-flow training shared by SD3 and FLUX (Esser et al. 2024, arXiv 2403.03206): the
noisy input x_s = (1 - s) x + s e, the target the velocity e - x, s drawn by a density over
(0, 1) and then shifted.

Taken from the SD3 paper and the anchors: the densities (logit-normal, the paper's best at
mean 0 and std 1; "mode" with its scale; uniform) through diffusers'
`compute_density_for_timestep_sampling`, given our generator so a resumed run draws the same;
the shift s' = a s / (1 + (a - 1) s), which with a = e^mu is FLUX's resolution-dependent shift
(mu linear in the image's token count between the scheduler's base and max shift), as its
pipeline samples. Chosen: s is continuous (the SD3 paper; diffusers' scripts index a
1000-entry table instead), and the model's own scheduler config decides the shift unless
--timestep-shift says otherwise, so training and sampling agree. Timesteps in batches are
1000 s, as the flow schedulers count them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from imprint.families.base import Family
from imprint.util.settings import setting


@dataclass
class FlowMatchingSettings:
    timestep_sampling: str = setting(
        "logit_normal", "SD3 / FLUX: the density the noise level is drawn from: logit_normal (the SD3 paper's "
        "best), mode (with --mode-scale) or uniform", choices=("logit_normal", "mode", "uniform"))
    logit_mean: float = setting(0.0, "SD3 / FLUX: mean of the logit-normal density")
    logit_std: float = setting(1.0, "SD3 / FLUX: standard deviation of the logit-normal density", positive=True)
    mode_scale: float = setting(1.29, "SD3 / FLUX: scale of the mode density (the SD3 paper's 1.29)")
    timestep_shift: float | None = setting(
        None, "SD3 / FLUX: shift of the drawn noise level toward noise, s' = a s / (1 + (a - 1) s); 1: none",
        positive=True, shown_default="the model's scheduler: FLUX's resolution-dependent shift (use_dynamic_shifting), "
        "else its `shift` (SD3: 3)")
    flux_guidance: float = setting(1.0, "FLUX: the guidance embedding's value in training, for guidance-distilled "
                                   "models (FLUX.1-dev); diffusers' README trains with 1")


def shifted(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """s' = a s / (1 + (a - 1) s): the flow schedulers' shift (a = e^mu for the dynamic one)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def scheduler_shift(config, tokens: int | None) -> float:
    """The shift a flow scheduler samples an image of `tokens` tokens with: FLUX's a = e^mu, mu from
    diffusers' calculate_shift over the config's sequence lengths and shifts (use_dynamic_shifting),
    else the config's static `shift`."""
    if config.get("use_dynamic_shifting") and tokens is not None:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        return math.exp(calculate_shift(tokens, config.get("base_image_seq_len", 256),
                                        config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                        config.get("max_shift", 1.15)))
    return float(config.get("shift", 1.0))


class FlowMatchingFamily(Family):
    """The objective of a rectified-flow family; the subclass loads the parts and conditions."""

    prediction_type = "flow"
    default_resolution = 1024
    settings = FlowMatchingSettings()
    patch_size = 1  # latent pixels per image token side (FLUX packs 2x2)
    sampling_scheduler = "FlowMatchEulerDiscreteScheduler"

    def configure(self, settings: FlowMatchingSettings | None) -> None:
        self.settings = settings or FlowMatchingSettings()

    def t5_embeddings(self, t5, ids: torch.Tensor) -> torch.Tensor:
        """T5's last hidden states, made once per distinct prompt: T5 never trains, and it is freed
        after the prompts are encoded (it is the largest part after the transformer)."""
        cache = self.__dict__.setdefault("t5_cache", {})
        rows = []
        for row in ids:
            key = row.numpy().tobytes()
            if key not in cache:
                if t5 is None:
                    raise RuntimeError("a prompt reached the model that T5 did not encode before it was freed")
                with torch.no_grad():
                    cache[key] = t5(row[None].to(t5.device))[0][0]
            rows.append(cache[key])
        return torch.stack(rows)

    # --- latents --------------------------------------------------------------------------
    def sample_latents(self, mean, std, generator):
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        config = self.vae.config
        return (mean + std * eps - (config.shift_factor or 0.0)) * config.scaling_factor

    def decode_latents(self, latents):
        config = self.vae.config
        return self.vae.decode(latents / config.scaling_factor + (config.shift_factor or 0.0), return_dict=False)[0]

    # --- the objective --------------------------------------------------------------------
    def shift_for(self, latent_shape) -> float:
        if self.settings.timestep_shift is not None:
            return self.settings.timestep_shift
        tokens = None if latent_shape is None else \
            (latent_shape[-2] // self.patch_size) * (latent_shape[-1] // self.patch_size)
        return scheduler_shift(self.noise_scheduler.config, tokens)

    def sample_timesteps(self, n: int, generator: torch.Generator, latent_shape=None) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        s = self.settings
        u = compute_density_for_timestep_sampling(s.timestep_sampling, n, s.logit_mean, s.logit_std, s.mode_scale,
                                                  generator=generator)
        return shifted(u, self.shift_for(latent_shape)) * 1000

    @staticmethod
    def sigmas(timesteps: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        sigmas = timesteps.float() / 1000
        if like is not None:
            sigmas = sigmas.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
        return sigmas

    def noisy_input_and_target(self, latents, noise, timesteps):
        sigma = self.sigmas(timesteps, latents)
        return (1 - sigma) * latents + sigma * noise, noise - latents

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        sigmas = self.sigmas(timesteps)
        return ((1 - sigmas) / sigmas) ** 2

    def predicted_x0(self, noisy, prediction, timesteps):
        return noisy - self.sigmas(timesteps, noisy) * prediction
