"""Aspect-ratio buckets (--buckets, after kohya's sd-scripts): a photo keeps its shape instead
of being cropped square. The bucket sizes have about resolution^2 pixels, sides that are
multiples of resolution/8 (64 at 512, never more than 64) between resolution/2 and
2 x resolution; a photo goes to the bucket of the nearest aspect ratio and is resized to cover
it and centre-cropped. Every batch holds rows of one bucket.

The subject rows of a run: without --buckets, all photos are one square bucket and each
epoch a seeded permutation of the photos (each --repeats times), walked batch by batch. With
--buckets, each epoch cuts every bucket's seeded order into batches and shuffles the batches
of all buckets together, so a bucket's share of the steps is its share of the photos.
Both are functions of (seed, batch index) alone, so a resumed run draws what an unbroken one does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from imprint.util.rng import batch_indices, step_generator

ROWS_STREAM = 1  # the random stream of the subject rows (0: noise, 2: class rows, 3: flips)


@dataclass
class Bucket:
    size: tuple[int, int]   # (width, height) in pixels
    images: list[int]       # the subject photos in it (indices into the folder's sorted list)
    mean: torch.Tensor      # their cached latent posteriors, in that order
    std: torch.Tensor
    flipped: tuple[torch.Tensor, torch.Tensor] | None = None  # with --flip: the mirrored photos' posteriors
    masks: torch.Tensor | None = None   # with masks: (N, 1, h, w) subject share per latent pixel


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """(width, height) of every bucket at `resolution`, sorted; (resolution, resolution) among them."""
    step = min(64, resolution // 8)
    smallest = -(-(resolution // 2) // step) * step
    largest = resolution * 2 // step * step
    area = resolution * resolution
    sizes = {(resolution, resolution)}
    for width in range(smallest, largest + 1, step):
        height = min(largest, area // width // step * step)
        if height >= smallest:
            sizes |= {(width, height), (height, width)}
    return sorted(sizes)


def bucket_for(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The bucket of a width x height photo: the nearest aspect ratio (in log ratio, so portrait
    and landscape are treated alike); a tie goes to the larger bucket."""
    ratio = math.log(width / height)
    return min(bucket_sizes(resolution), key=lambda s: (abs(math.log(s[0] / s[1]) - ratio), -s[0] * s[1], s))


def subject_rows(seed: int, index: int, batch_size: int, buckets: list[Bucket], repeats: int,
                 by_bucket: bool) -> tuple[int, list[int]]:
    """Batch `index`'s subject rows: the bucket's number and the positions in it."""
    counts = tuple(len(b.images) for b in buckets)
    if not by_bucket:
        n = counts[0]
        return 0, [i % n for i in batch_indices(seed, ROWS_STREAM, index, batch_size, n * repeats)]
    per_epoch = sum(math.ceil(count * repeats / batch_size) for count in counts)
    epoch, offset = divmod(index, per_epoch)
    return epoch_batches(seed, epoch, batch_size, counts, repeats)[offset]


@lru_cache(maxsize=4)
def epoch_batches(seed: int, epoch: int, batch_size: int, counts: tuple[int, ...],
                  repeats: int) -> list[tuple[int, list[int]]]:
    """Every batch of one epoch with --buckets, in the order they are drawn."""
    generator = step_generator(seed, ROWS_STREAM, epoch)
    batches = []
    for bucket, count in enumerate(counts):
        order = [int(i) % count for i in torch.randperm(count * repeats, generator=generator)]
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            while len(rows) < batch_size:  # a bucket's last batch is topped up from its start
                rows += order[:batch_size - len(rows)]
            batches.append((bucket, rows))
    return [batches[int(i)] for i in torch.randperm(len(batches), generator=generator)]
