"""FreeCus (Zhang et al., ICCV 2025; the authors' Monalissaa/FreeCus): training-free subject
customisation on FLUX. The reference photo is forward-noised along the sampling schedule with
the dynamic shift negated (mu -> -mu: a less noisy reference at each step), run through the same
transformer with the same prompt, and at the "vital" layers its subject tokens' keys (x 1.1) and
values are prepended to the generated image's joint attention, whose text keys are scaled by 1.1.

Taken from the authors' code: the negative shift, the fixed noise, the keys stored after the
norms and the rotary embedding (the reference on the generated image's token grid), the
foreground tokens (the mask at token resolution, any subject pixel), the vital layers
[0, 1, 2, 17, 18, 25, 28, 53, 54, 56] of the 57 (19 double, then 38 single blocks), both 1.1
scales, every step, the text tokens' queries seeing the reference too. Chosen: the reference
pass runs step by step just before the image's (a transformer pre-hook), which gives the
features the authors' separate "save" replay stores, with one step in memory instead of all;
the reference's latent is the VAE's mean (theirs: a draw); the image's token count sets mu (their
script computes it from a sequence 4x too short); the paper's MLLM description step is a
user-given `--description` appended to the prompt. Layers a smaller FLUX lacks are skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imprint.image.flux_attention import FluxProcessor, flux_attention_modules, plain_attention

VITAL_LAYERS = (0, 1, 2, 17, 18, 25, 28, 53, 54, 56)


def negative_shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """The reference's noise level at the step whose generation level is `sigma`: the same base
    level b (sigma = a b / (1 + (a - 1) b)) shifted by 1 / a instead of a (mu -> -mu)."""
    base = sigma / (shift - (shift - 1) * sigma)
    inverse = 1.0 / shift
    return inverse * base / (1 + (inverse - 1) * base)


class FreeCus:
    """Installs FreeCus on a FluxPipeline for one reference (packed latents' source and mask)."""

    def __init__(self, pipe, reference_latents: torch.Tensor, mask: torch.Tensor, layers=VITAL_LAYERS,
                 key_scale: float = 1.1, text_scale: float = 1.1, seed: int = 0):
        self.pipe, self.transformer = pipe, pipe.transformer
        self.reference = reference_latents  # (1, C, h, w), scaled and shifted as the transformer takes them
        self.noise = torch.randn(reference_latents.shape, generator=torch.Generator().manual_seed(seed))
        h, w = reference_latents.shape[-2:]
        tokens = F.interpolate(mask, size=(h // 2, w // 2), mode="area").flatten()
        self.foreground = torch.nonzero(tokens > 0).flatten()  # any subject pixel in the token
        self.layers, self.key_scale, self.text_scale = set(layers), key_scale, text_scale
        self.recording, self.text_tokens = False, 0
        self.stored: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.saved, self.hook = None, None

    def reference_input(self, sigma: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
        """The reference noised to its (negatively shifted) level, packed as the image's tokens."""
        from diffusers import FluxPipeline

        from imprint.families.flow import scheduler_shift

        shift = scheduler_shift(self.pipe.scheduler.config, like.shape[1])
        level = negative_shift_sigma(sigma.float().flatten()[0].cpu(), shift)
        x = level * self.noise + (1 - level) * self.reference
        b, c, h, w = x.shape
        return FluxPipeline._pack_latents(x, b, c, h, w).to(like.device, like.dtype).expand(batch, -1, -1)

    def pre_hook(self, module, args, kwargs):
        if self.recording:
            return None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if hidden.shape[1] != self.reference.shape[-2] * self.reference.shape[-1] // 4:
            raise ValueError("freecus: the reference and the image have different token grids; generate at the "
                             "reference's resolution")
        self.text_tokens = kwargs["encoder_hidden_states"].shape[1]
        reference = self.reference_input(kwargs["timestep"], hidden.shape[0], hidden)
        self.recording = True
        try:
            self.transformer(reference, *args[1:], **{k: v for k, v in kwargs.items() if k != "hidden_states"})
        finally:
            self.recording = False
        return None

    def attend_at(self, layer: int):
        def attend(query, key, value, text):
            if layer not in self.layers:
                return plain_attention(query, key, value, text)
            if self.recording:  # the reference's subject tokens at this layer and step
                image_key, image_value = key[:, text:], value[:, text:]
                self.stored[layer] = (self.key_scale * image_key[:, self.foreground], image_value[:, self.foreground])
                return plain_attention(query, key, value, text)
            ref_key, ref_value = self.stored[layer]
            key = torch.cat([key[:, :text] * self.text_scale, key[:, text:]], dim=1)
            return plain_attention(query, torch.cat([ref_key, key], dim=1), torch.cat([ref_value, value], dim=1), text)
        return attend

    def __enter__(self):
        self.saved = dict(self.transformer.attn_processors)
        for index, (_, module) in enumerate(flux_attention_modules(self.transformer)):
            module.set_processor(FluxProcessor(self.attend_at(index), lambda: self.text_tokens))
        self.hook = self.transformer.register_forward_pre_hook(self.pre_hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.hook.remove()
        self.transformer.set_attn_processor(self.saved)
        self.stored.clear()
        return False


def default_layers(transformer) -> list[int]:
    """The paper's vital layers that this transformer has (a smaller FLUX has fewer than 57)."""
    count = len(flux_attention_modules(transformer))
    return [i for i in VITAL_LAYERS if i < count]

