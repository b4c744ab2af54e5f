"""Every random draw of a run comes from (seed, stream, index): resuming at a step needs no RNG state."""

from __future__ import annotations

import torch


def step_generator(seed: int, stream: int, index: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed((seed * 1_000_003 + stream * 7_919 + index) % 2**63)


def batch_indices(seed: int, stream: int, step: int, batch_size: int, n: int) -> list[int]:
    """The items of `step`: epochs walk seeded permutations of the n items."""
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        order = torch.randperm(n, generator=step_generator(seed, stream, epoch))
        out.append(int(order[offset]))
    return out
