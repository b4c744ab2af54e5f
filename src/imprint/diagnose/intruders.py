"""Intruder dimensions (Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of Equivalence",
arXiv 2410.21228): singular vectors of a fine-tuned weight that no singular vector of the
pre-trained weight resembles.

Taken from the paper's Algorithm 1 and the authors' code (reeceshuttle/intruder-dimensions,
find_intruder_dimensions.py): for a weight W (out x in) and its pre-trained W0, the thin SVDs
W = U S V^T and W0 = U0 S0 V0^T; each of the top k = 10 left singular vectors u_j of W is an
intruder at threshold epsilon iff max_i |cos(u_j, u0_i)| < epsilon over all of W0's left singular
vectors; a model's count is the plain sum over its matrices. Their default epsilon is 0.5; the
paper sweeps epsilon, as the report here does.

Chosen here: the matrices are every 2-D weight inside the model's blocks (the language model's
attention and MLP projections; the denoiser's linear layers), in float32; a matrix the run left
unchanged has no intruders (its singular vectors are the base's) and is not decomposed.
"""

from __future__ import annotations

import torch

TOP_K = 10
EPSILONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def max_similarities(base: torch.Tensor, tuned: torch.Tensor, k: int = TOP_K) -> torch.Tensor:
    """For each of the top-k left singular vectors of `tuned`, its largest |cosine| with any left
    singular vector of `base` (singular vectors are unit vectors, so cosine is the dot product)."""
    u_base = torch.linalg.svd(base.float(), full_matrices=False).U
    u_tuned = torch.linalg.svd(tuned.float(), full_matrices=False).U[:, :k]
    return (u_tuned.T @ u_base).abs().max(dim=1).values


def intruder_counts(base: torch.Tensor, tuned: torch.Tensor, k: int = TOP_K,
                    epsilons: tuple[float, ...] = EPSILONS) -> list[int]:
    """The number of intruder dimensions among the top k, at each threshold."""
    if torch.equal(base, tuned):
        return [0] * len(epsilons)
    similarities = max_similarities(base, tuned, k)
    return [int((similarities < eps).sum()) for eps in epsilons]


def model_intruders(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], k: int = TOP_K,
                    epsilons: tuple[float, ...] = EPSILONS) -> dict:
    """Counts over matched 2-D weights: the total per epsilon, and each changed matrix's counts."""
    per_matrix = {}
    for name, weight in tuned.items():
        if name in base and weight.ndim == 2 and not torch.equal(base[name], weight):
            per_matrix[name] = intruder_counts(base[name], weight, k, epsilons)
    totals = [sum(counts[i] for counts in per_matrix.values()) for i in range(len(epsilons))]
    return {"k": k, "epsilons": list(epsilons), "total": totals, "matrices_changed": len(per_matrix),
            "matrices_compared": sum(1 for n, w in tuned.items() if n in base and w.ndim == 2),
            "per_matrix": per_matrix}
