"""DreamTuner's self-subject-attention (Hua et al. 2023, arXiv 2312.13691, section 3.3): at each
denoising step the reference photo, noised to the step, goes through the same UNet; each
self-attention layer of the generated image then also attends to the reference's features:

    SSA(z, z_r) = softmax(q [k, k_r]^T / sqrt(d) + log m) [v, v_r],   m = [1, w_ref m_r]

with q, k, v the layer's own projections of z (the generated image's features), k_r, v_r those
of z_r (the reference's, at the same layer and step), m_r the reference's subject mask at the
layer's resolution and w_ref = 3 (the paper's value for natural images). Background tokens of
the reference get m = 0 (log 0 = -inf: never attended to); w_ref = 0 is plain generation.

Taken from the paper: the formula, w_ref, the reference noised to the step and passed through
the same model with the same text. Chosen: the reference is noised with one fixed noise to the
step being sampled (the paper's interleaved guidance, which mixes references at t - dt and
t + dt', and its subject encoder, which needs large-scale training, are not part of this);
the reference pass runs as a forward pre-hook of the UNet, so any UNet pipeline (SD, SDXL) and
any adapter loaded into it work unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class SubjectFeatures:
    """What the reference pass recorded: each self-attention layer's input, by layer name."""

    def __init__(self):
        self.recording = False
        self.features: dict[str, torch.Tensor] = {}


class SelfSubjectAttnProcessor:
    """A self-attention layer's processor: records its input during the reference pass; in the
    image's pass attends to [own tokens, reference tokens] with the log-mask bias."""

    def __init__(self, name: str, state: SubjectFeatures, mask: torch.Tensor, weight: float, plain):
        self.name, self.state, self.mask, self.weight, self.plain = name, state, mask, weight, plain

    def bias(self, tokens: int, latent_hw: tuple[int, int], device, dtype) -> torch.Tensor:
        """(1, 1, 1, tokens) = log(w_ref m_r) at this layer's resolution (-inf where 0)."""
        h, w = latent_hw
        factor = round(math.sqrt(h * w / tokens))
        mask = F.interpolate(self.mask, size=(h // factor, w // factor), mode="area").flatten(1)
        with torch.no_grad():
            return torch.log(self.weight * mask).reshape(1, 1, 1, -1).to(device, dtype)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if self.state.recording:
            self.state.features[self.name] = hidden_states
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        reference = self.state.features.get(self.name)
        if reference is None or hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        batch, tokens, _ = hidden_states.shape
        both = torch.cat([hidden_states, reference.to(hidden_states.dtype)], dim=1)
        query, key, value = attn.to_q(hidden_states), attn.to_k(both), attn.to_v(both)
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        heads = attn.heads
        query, key, value = (x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2) for x in (query, key, value))
        own = torch.zeros(1, 1, 1, tokens, device=query.device, dtype=query.dtype)
        bias = torch.cat([own, self.bias(reference.shape[1], self.state.latent_hw, query.device, query.dtype)], dim=-1)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, tokens, -1).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class SelfSubjectAttention:
    """Installs SSA on a UNet pipeline for one reference photo (latents and mask) and removes it."""

    def __init__(self, pipe, reference_latents: torch.Tensor, mask: torch.Tensor, weight: float = 3.0, seed: int = 0):
        from diffusers import DDPMScheduler

        self.pipe, self.unet = pipe, pipe.unet
        self.reference = reference_latents  # (1, C, h, w), scaled as the UNet takes them
        self.noise = torch.randn(reference_latents.shape, generator=torch.Generator().manual_seed(seed))
        self.alphas = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod
        self.state = SubjectFeatures()
        self.state.latent_hw = tuple(reference_latents.shape[-2:])
        self.mask, self.weight = mask, weight
        self.saved = None
        self.hook = None

    def noised_reference(self, timestep, batch: int, like: torch.Tensor) -> torch.Tensor:
        """The reference at the step's noise level, as the UNet's (unscaled) input: sqrt(a) x + sqrt(1 - a) e."""
        t = int(torch.as_tensor(timestep).flatten()[0].round())
        a = self.alphas[t]
        x = a.sqrt() * self.reference + (1 - a).sqrt() * self.noise
        return x.to(like.device, like.dtype).expand(batch, -1, -1, -1)

    def pre_hook(self, module, args, kwargs):
        if self.state.recording:
            return None
        sample, timestep = args[0], args[1] if len(args) > 1 else kwargs["timestep"]
        if sample.shape[-2:] != self.state.latent_hw:
            raise ValueError(f"self-subject-attention: the reference is {self.state.latent_hw} latents and the "
                             f"image {tuple(sample.shape[-2:])}; generate at the reference's resolution")
        self.state.recording = True
        try:
            self.unet(self.noised_reference(timestep, sample.shape[0], sample), *args[1:], **kwargs)
        finally:
            self.state.recording = False
        return None

    def __enter__(self):
        self.saved = dict(self.unet.attn_processors)
        processors = {}
        for name, processor in self.saved.items():
            if name.endswith("attn1.processor"):  # self-attention of each transformer block
                processors[name] = SelfSubjectAttnProcessor(name, self.state, self.mask, self.weight, processor)
            else:
                processors[name] = processor
        self.unet.set_attn_processor(processors)
        self.hook = self.unet.register_forward_pre_hook(self.pre_hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.hook.remove()
        self.unet.set_attn_processor(self.saved)
        self.state.features.clear()
        return False
