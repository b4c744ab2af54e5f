"""The arithmetic of the metrics, on embeddings: no models here, so it is testable by hand."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def similarity_to_reference(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per image: its mean cosine to every reference image (DINO, CLIP-I, PRES)."""
    return cosine_matrix(images, reference).mean(dim=1)


def leave_one_out(reference: torch.Tensor) -> torch.Tensor:
    """Per real image: mean cosine to the other real images (the 'real images' ceiling)."""
    n = reference.shape[0]
    if n < 2:
        return torch.full((n,), float("nan"))
    sims = cosine_matrix(reference, reference)
    return (sims.sum(dim=1) - sims.diagonal()) / (n - 1)


def diversity(images: torch.Tensor) -> float:
    """Mean pairwise distance (1 - cosine) between images of the same prompt."""
    n = images.shape[0]
    if n < 2:
        return float("nan")
    sims = cosine_matrix(images, images)
    upper = sims[torch.triu_indices(n, n, offset=1).unbind()]
    return float((1 - upper).mean())


def mean_interval(values) -> dict:
    """Mean with a 95% normal-approximation interval (1.96 standard errors)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return {"mean": mean, "low": mean, "high": mean, "n": 1}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    half = 1.96 * sd / math.sqrt(len(xs))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(xs)}


def harmonic_reward(image_similarity: float, text_alignment: float, lam: float) -> float:
    """RPO's lambda-harmonic reward (arXiv 2407.12164): both scores mapped to [0, 1] by
    (s + 1) / 2, then R = 1 / (lambda / I + (1 - lambda) / T)."""
    i = (image_similarity + 1) / 2
    t = (text_alignment + 1) / 2
    if i <= 0 or t <= 0:
        return 0.0
    return 1.0 / (lam / i + (1 - lam) / t)
