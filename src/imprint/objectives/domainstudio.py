"""DomainStudio's relative-distance losses (Zhu et al., arXiv 2306.14153): keep the adapted
model's images as different from one another as the class's are, so that few-shot training
does not collapse them onto the training photos (it targets diversity, for subjects and for
domain / style sets).

With one timestep t shared by the batch, the trained model's predicted x0 of every row is
decoded to pixels; for each instance image i, p_ada[i] = softmax over j != i of cos(I_i, I_j),
and p_src the same over the class images (the class prompt's outputs of the same, trained
model). Then
  L = w_img KL(p_src || p_ada) + w_hf KL(p_src(hf) || p_ada(hf)) + w_mse MSE(hf(I), hf(photo))
hf(x) = LH + HL + HH of a one-level Haar transform (per channel, stride 2).

Taken from the authors' code (bbzhu-jy16/DomainStudio, Text-to-Image/train_domainstudio.py):
the shared timestep (the rows keep their own noise: the step's), the x0 formula, decoding with
the gradient through the frozen VAE decoder, softmax over the other rows of whole-image cosines,
KL with element-mean reduction, the Haar filters (H = [-1, 1] / sqrt 2), the weights 100 / 100 /
0.1, the class half from the trained model (its frozen source copy is loaded but unused), and a
second forward for this term beside the step's own denoising loss (per-row timesteps).
Chosen here: latents are divided by the VAE's scaling factor before decoding (the code decodes
the scaled latents); the HF-MSE target is the rows' own photos (their clean latents decoded; the
code draws an unrelated batch of real photos); --domainstudio-weight scales all three (1: the
paper's). It needs prior preservation (the class half) and at least 3 subject rows a step (a
row's distribution is over the others)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imprint.objectives.base import CLASS, INSTANCE, LossTerm, TermContext, register_term
from imprint.util.settings import setting


@dataclass
class DomainStudioSettings:
    domainstudio_weight: float = setting(0.0, "DomainStudio's relative-distance losses, scaled (1: the paper's "
                                         "weights; needs --prior-preservation and --batch-size 3 or more); "
                                         "0: off", non_negative=True)
    domainstudio_image_weight: float = setting(100.0, "weight of the image-level pairwise KL (the paper's 100)")
    domainstudio_hf_weight: float = setting(100.0, "weight of the high-frequency pairwise KL (the paper's 100)")
    domainstudio_hf_mse_weight: float = setting(0.1, "weight of the high-frequency MSE to the photos (the paper's 0.1)")


def haar_high_frequency(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> LH + HL + HH of a one-level Haar transform, (N, C, H/2, W/2)."""
    low = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    high = torch.tensor([-1.0, 1.0]) / math.sqrt(2)
    kernel = (torch.outer(low, high) + torch.outer(high, low) + torch.outer(high, high)).to(images)
    channels = images.shape[1]
    return F.conv2d(images, kernel.expand(channels, 1, 2, 2), stride=2, groups=channels)


def relative_distances(images: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, N - 1): row i, a softmax over j != i of cos(image i, image j)."""
    flat = F.normalize(images.flatten(1).float(), dim=1)
    cosines = flat @ flat.T
    n = cosines.shape[0]
    others = cosines[~torch.eye(n, dtype=torch.bool, device=cosines.device)].reshape(n, n - 1)
    return torch.softmax(others, dim=1)


def pairwise_kl(source: torch.Tensor, adapted: torch.Tensor) -> torch.Tensor:
    """KL(p_source || p_adapted) of the two sets' relative distances, the mean over elements."""
    # written out: torch's kl_div(reduction="mean") is the code's element mean today, but is to change
    p, q = relative_distances(source), relative_distances(adapted)
    return (p * (torch.log(p) - torch.log(q))).mean()


@register_term
class DomainStudio(LossTerm):
    name = "domainstudio"
    Settings = DomainStudioSettings

    def enabled(self) -> bool:
        return self.settings is not None and self.settings.domainstudio_weight > 0

    def loss(self, ctx: TermContext):
        batch, family, s = ctx.batch, ctx.family, self.settings
        if not (batch.has(INSTANCE) and batch.has(CLASS)):
            return None
        # the shared-timestep pass: the step's noise, one timestep for every row
        t = family.sample_timesteps(1, batch.draws).expand(batch.latents.shape[0]).to(batch.timesteps.device)
        noisy, _ = family.noisy_input_and_target(batch.latents, batch.noise, t.cpu())
        noisy = noisy.to(batch.noisy.device, batch.noisy.dtype)
        with ctx.autocast():
            prediction = family.predict(noisy, t, batch.conditioning)
            x0 = family.predicted_x0(noisy, prediction, t)
            images = family.decode_latents(x0).float()
        instance, class_ = batch.rows(INSTANCE).to(images.device), batch.rows(CLASS).to(images.device)
        adapted, source = images[instance], images[class_]
        hf_adapted, hf_source = haar_high_frequency(adapted), haar_high_frequency(source)
        with torch.no_grad(), ctx.autocast():
            photos = family.decode_latents(batch.latents[instance.cpu()].to(batch.noisy.device, batch.noisy.dtype)).float()
        total = (s.domainstudio_image_weight * pairwise_kl(source, adapted)
                 + s.domainstudio_hf_weight * pairwise_kl(hf_source, hf_adapted)
                 + s.domainstudio_hf_mse_weight * F.mse_loss(hf_adapted, haar_high_frequency(photos)))
        return s.domainstudio_weight * total
