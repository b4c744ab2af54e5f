"""HiFi Tuner's reference-guided generation (Wang et al., arXiv 2312.00079, sec. 3.3, Algorithm 2):
the subject photo nearest a first sample, aligned to where that sample drew the subject and
DDIM-inverted, steers the subject's region of a second sample from the same noise.

Taken from the paper: generate once from x_T (I_g1) and segment it (M_g); the subject photo whose
DINO embedding is nearest I_g1's is the reference I_r, with its mask M_r; a similarity transform T
(scale, rotation, translation) fitted so that T(M_r) covers M_g; T(I_r) encoded and DDIM-inverted
with the reference prompt at guidance 1 (x*_t for every sampling timestep); a second generation
from the same x_T, DDIM with the prompt and the step's subject vectors: at t_s the latent inside
M = T(M_r) becomes x*_t; for t_e <= t <= t_s, after the step, the null-text embedding phi_h
(phi at t_s, carried over from step to step) takes J Adam steps (lr 1e-2) on
||x*_{t-1}[M] - F(x_t, [c, c_s^t], phi_h)[M]||^2 and the masked latent becomes F(..., phi_h)[M];
t_s, t_e = 40, 10 of 50 steps (here the fractions 0.8 and 0.2 of the steps), J = 10.
Chosen here: M_r is the run's own subject mask (--masks / --auto-masks) rather than a new Grounding
SAM segmentation; I_g1 is segmented by CLIPSeg (the --auto-masks model) prompted with the class
name; the reference prompt c_r is "a photo of a {class_name}" (the paper captions I_r with BLIP-2,
which is not shipped here); T is fitted by Adam on the symmetric chamfer distance between the two
masks' pixel sets, started from their centroids and areas (the paper's one-way nearest-point sum
can shrink T(M_r) onto one point of M_g); where I_g1's mask is empty, T is the identity. The paper's subject substitution is
image/substitution.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger("imprint")


@dataclass
class GuidanceSettings:
    start: float = 0.8      # t_s: the paper's step 40 of 50, counted down
    end: float = 0.2        # t_e: its step 10 of 50
    null_steps: int = 10    # J
    null_lr: float = 1e-2
    align_steps: int = 200

    def step_range(self, steps: int) -> tuple[int, int]:
        """(first, last) sampling step index (0-based, counted up) of the guidance: step i is the
        paper's t = steps - i, so t_s = 40, t_e = 10 of 50 are i = 10 and 40."""
        return round((1 - self.start) * steps), round((1 - self.end) * steps)


# --- DDIM, with the pipeline's own scheduler formulas -------------------------------------------
def ddim_scheduler(pipe, steps: int):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


def to_epsilon(output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The noise a model output means for an input x at cumulative alpha `alpha`."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha.sqrt() * output + (1 - alpha).sqrt() * x
    return (x - alpha.sqrt() * output) / (1 - alpha).sqrt()  # "sample"


def invert(predict: Callable, scheduler, x0: torch.Tensor) -> dict[int, torch.Tensor]:
    """DDIM inversion: {timestep: x*_t} for every timestep of `scheduler`, from clean latents x0;
    each level from the one below with the model's noise at the new timestep (the inverse of a DDIM
    step whose noise is the same)."""
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    out, x = {}, x0
    for t in reversed(scheduler.timesteps.tolist()):
        below = t - step
        a_from = scheduler.alphas_cumprod[below] if below >= 0 else scheduler.final_alpha_cumprod
        a_to = scheduler.alphas_cumprod[t]
        eps = to_epsilon(predict(x, t), x, a_to, scheduler.config.prediction_type)
        x0_pred = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
        x = a_to.sqrt() * x0_pred + (1 - a_to).sqrt() * eps
        out[t] = x
    return out


def guided_output(unet, x, t, positive, negative, guidance: float) -> torch.Tensor:
    """The classifier-free-guided model output, as the diffusers pipelines combine it."""
    both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([negative, positive])).sample
    uncond, cond = both.chunk(2)
    return uncond + guidance * (cond - uncond)


# --- aligning the reference's mask to the sample's ---------------------------------------------
def mask_points(mask: torch.Tensor) -> torch.Tensor:
    """(N, 2) (x, y) pixel centres of a (H, W) bool mask, in [-1, 1] (affine_grid's coordinates)."""
    h, w = mask.shape
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([(2 * xs.float() + 1) / w - 1, (2 * ys.float() + 1) / h - 1], dim=1)


def similarity(params: torch.Tensor) -> torch.Tensor:
    """(2, 3) forward map p -> s R p + t of (log s, angle, tx, ty)."""
    s, a = params[0].exp(), params[1]
    rotation = torch.stack([torch.stack([a.cos(), -a.sin()]), torch.stack([a.sin(), a.cos()])])
    return torch.cat([s * rotation, params[2:].reshape(2, 1)], dim=1)


def fit_similarity(source: torch.Tensor, target: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """The (2, 3) similarity that moves mask `source` onto mask `target` (both (H, W) bool), by
    Adam on the symmetric chamfer distance of their pixel sets; the identity where one is empty."""
    if not source.any() or not target.any():
        return torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    p, q = mask_points(source), mask_points(target)
    scale = (q.shape[0] / p.shape[0]) ** 0.5 * (target.shape[1] / source.shape[1])
    shift = q.mean(0) - scale * p.mean(0)
    params = torch.tensor([float(np.log(scale)), 0.0, *shift.tolist()], requires_grad=True)
    optimizer = torch.optim.Adam([params], lr=1e-2)
    for _ in range(steps):
        moved = p @ similarity(params)[:, :2].T + similarity(params)[:, 2]
        distances = torch.cdist(moved, q) ** 2
        loss = distances.min(dim=1).values.mean() + distances.min(dim=0).values.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return similarity(params.detach())


def warp(tensor: torch.Tensor, forward: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) moved by the forward similarity into a (B, C, *size) canvas (zeros outside)."""
    inverse = torch.linalg.inv(torch.cat([forward, torch.tensor([[0.0, 0.0, 1.0]])]))[:2]
    grid = F.affine_grid(inverse.unsqueeze(0).expand(tensor.shape[0], 2, 3), [tensor.shape[0], 1, *size],
                         align_corners=False)
    return F.grid_sample(tensor.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def latent_mask(mask: Image.Image | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A mask ('L' image or (H, W)) as a (h, w) bool at latent size: subject where half a cell is."""
    pixels = (torch.from_numpy(np.array(mask.convert("L"))) > 0) if isinstance(mask, Image.Image) else mask
    return F.interpolate(pixels.float()[None, None], size=size, mode="area")[0, 0] >= 0.5


# --- the two generations -----------------------------------------------------------------------
class Sampler:
    """DDIM sampling with a pipeline's parts, the prompt's encoding per timestep (HiFi's step-wise
    vectors where the run has them)."""

    def __init__(self, pipe, prompt: str, negative_prompt: str, steps: int, guidance: float):
        self.pipe, self.guidance = pipe, guidance
        self.scheduler = ddim_scheduler(pipe, steps)
        self.device = pipe.unet.device
        with torch.no_grad():
            self.positive, self.negative = pipe.encode_prompt(prompt, self.device, 1, True, negative_prompt)
        self.prompt_at = getattr(pipe, "imprint_prompt_at", None)

    def positive_at(self, t) -> torch.Tensor:
        return self.prompt_at(self.positive, t) if self.prompt_at else self.positive

    def step(self, x: torch.Tensor, t, negative: torch.Tensor | None = None,
             positive: torch.Tensor | None = None) -> torch.Tensor:
        output = guided_output(self.pipe.unet, x, t, self.positive_at(t) if positive is None else positive,
                               self.negative if negative is None else negative, self.guidance)
        return self.scheduler.step(output, t, x).prev_sample

    def initial_latents(self, resolution: int, seed: int) -> torch.Tensor:
        pipe = self.pipe
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = pipe.prepare_latents(1, pipe.unet.config.in_channels, resolution, resolution,
                                       self.positive.dtype, self.device, generator)
        return latents * self.scheduler.init_noise_sigma / pipe.scheduler.init_noise_sigma

    @torch.no_grad()
    def sample(self, latents: torch.Tensor) -> torch.Tensor:
        for t in self.scheduler.timesteps:
            latents = self.step(latents, t)
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        vae = self.pipe.vae
        pixels = vae.decode(latents / vae.config.scaling_factor).sample
        return self.pipe.image_processor.postprocess(pixels, output_type="pil")[0]

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        return vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor

    def guided(self, latents: torch.Tensor, reference: dict[int, torch.Tensor], mask: torch.Tensor,
               settings: GuidanceSettings) -> torch.Tensor:
        """The second generation: the masked latent replaced at t_s, then steered by phi_h."""
        first, last = settings.step_range(len(self.scheduler.timesteps))
        timesteps = self.scheduler.timesteps.tolist()
        inside = mask.to(self.device)[None, None].expand_as(latents)
        null = self.negative.detach().clone().requires_grad_(True)
        self.trace: list[tuple[float, float]] = []
        optimizer = torch.optim.Adam([null], lr=settings.null_lr)
        for i, t in enumerate(timesteps):
            if i == first:
                latents = torch.where(inside, reference[t], latents)
            with torch.no_grad():
                following = self.step(latents, t)
            if first <= i <= last and i + 1 < len(timesteps):
                target = reference[timesteps[i + 1]]
                errors = []
                for _ in range(settings.null_steps):
                    error = ((self.step(latents, t, null) - target)[inside] ** 2).mean()
                    errors.append(float(error.detach()))
                    optimizer.zero_grad()
                    error.backward()
                    optimizer.step()
                with torch.no_grad():
                    steered = self.step(latents, t, null)
                if errors:  # (masked error before phi_h's steps, after them), per guided step
                    self.trace.append((errors[0], float(((steered - target)[inside] ** 2).mean())))
                following = torch.where(inside, steered, following)
            latents = following
        return latents


def reference_guided(pipe, prompt: str, photos: list[Image.Image], masks: list[Image.Image], features: Callable,
                     segment: Callable, class_name: str, resolution: int, seed: int, steps: int, guidance: float,
                     negative_prompt: str = "", settings: GuidanceSettings | None = None) -> tuple[Image.Image, dict]:
    """One image of `prompt`, reference-guided; and what was chosen (reference, transform).
    `features(images)` embeds images (DINO), `segment(image)` masks the subject ('L')."""
    settings = settings or GuidanceSettings()
    pipe.unet.requires_grad_(False)
    sampler = Sampler(pipe, prompt, negative_prompt, steps, guidance)
    start = sampler.initial_latents(resolution, seed)
    first = sampler.decode(sampler.sample(start))
    size = tuple(start.shape[-2:])
    sample_mask = latent_mask(segment(first), size)
    embeddings = features([first, *photos])
    similarities = F.cosine_similarity(embeddings[:1], embeddings[1:], dim=-1)
    chosen = int(similarities.argmax())
    reference_mask = latent_mask(masks[chosen], size)
    forward = fit_similarity(reference_mask, sample_mask, settings.align_steps)
    photo = photos[chosen].convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
    pixels = pipe.image_processor.preprocess(photo, resolution, resolution)
    moved = warp(pixels, forward, (resolution, resolution))
    moved_mask = warp(reference_mask.float()[None, None], forward, size)[0, 0] >= 0.5
    reference_prompt = f"a photo of a {class_name}"
    with torch.no_grad():
        c_r, _ = pipe.encode_prompt(reference_prompt, sampler.device, 1, False)
        x0 = sampler.encode(moved)  # the processor's [-1, 1]; zeros (grey) outside the moved photo
        inverted = invert(lambda x, t: pipe.unet(x, t, encoder_hidden_states=c_r).sample, sampler.scheduler, x0)
    latents = sampler.guided(start, inverted, moved_mask, settings)
    chosen_info = {"reference": chosen, "similarity": float(similarities[chosen]), "transform": forward.tolist(),
                   "sample_mask_cells": int(sample_mask.sum()), "reference_mask_cells": int(moved_mask.sum())}
    log.info("reference-guided: photo %d (DINO cosine %.3f), %d masked latent cells", chosen,
             chosen_info["similarity"], chosen_info["reference_mask_cells"])
    return sampler.decode(latents), chosen_info


def run_references(run, metadata: dict, resolution: int, masks: str | None, segmenter: str, features: str,
                   device="cpu") -> tuple[list[Image.Image], list[torch.Tensor], Callable, Callable]:
    """The run's subject photos and masks as trained (square, at `resolution`), the feature function
    that picks the reference, and the segmenter of the first sample."""
    from pathlib import Path

    from imprint.image.auto_masks import load_segmenter, segment as clipseg
    from imprint.image.data import load_subject_images
    from imprint.image.image_encoder import ImageEncoder
    from imprint.image.masks import fit_mask, load_masks
    from imprint.util.errors import ImprintError

    hp = metadata.get("hyperparameters") or {}
    folder = masks or hp.get("masks") or (str(Path(run) / "masks") if hp.get("auto_masks") else None)
    if folder is None:
        raise ImprintError(f"--reference-guidance needs the subject's masks: run {run} was trained without "
                           "--masks / --auto-masks; pass --reference-masks DIR (one mask per photo, same stem)")
    subject = load_subject_images(hp["images"], resolution, flag="--reference-guidance: the run's --images")
    fitted = [fit_mask(m, resolution, resolution)[0] > 0.5
              for m in load_masks(subject.paths, folder, "--reference-masks")]
    encoder = ImageEncoder(features, "--reference-features", device)
    processor, network = load_segmenter(segmenter, device)
    prompt = metadata.get("class_name", "")
    threshold = hp.get("auto_mask_threshold", 0.4)
    return (subject.images, fitted, encoder.encode,
            lambda image: clipseg(processor, network, image, prompt, threshold))
