"""How well a toy-world model draws what a prompt asks: the evaluator reads its images back.

`prompt_alignment` generates one image per scene prompt and reports, per attribute, the share
read back as prompted, and their mean (the alignment metric). `heldout_scenes` draws scenes
whose shape/colour pair pre-training never showed; `seen_scenes` draws the others.
"""

from __future__ import annotations

import random

from imprint.toyworld.backend import alignment, parse_prompt
from imprint.toyworld.evaluator import ATTRIBUTES, load_evaluator, read_images
from imprint.toyworld.pretrain import HELD_OUT
from imprint.toyworld.render import BACKGROUNDS, COLOURS, PATTERNS, POSITIONS, SHAPES, Scene
from imprint.image.sampling import sample


def _scenes(count: int, seed: int, held_out: bool) -> list[Scene]:
    rng = random.Random(f"imprint-quality-{seed}-{held_out}")
    pairs = sorted(HELD_OUT) if held_out else [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in HELD_OUT]
    scenes = []
    for i in range(count):
        shape, colour = pairs[i % len(pairs)] if held_out else rng.choice(pairs)
        scenes.append(Scene(shape, colour, rng.choice(PATTERNS), rng.choice(list(BACKGROUNDS)),
                            rng.choice(list(POSITIONS)), "large"))
    return scenes


def heldout_scenes(count: int = 64, seed: int = 0) -> list[Scene]:
    return _scenes(count, seed, True)


def seen_scenes(count: int = 64, seed: int = 0) -> list[Scene]:
    return _scenes(count, seed, False)


def prompt_alignment(pipe, scenes: list[Scene], evaluator=None, steps: int = 20, guidance: float = 6.0,
                     seed: int = 0) -> dict:
    """-> {"alignment": mean share of attributes read back, "per_attribute": {...}, "images"}."""
    evaluator = evaluator or load_evaluator()
    images = sample(pipe, [s.prompt() for s in scenes], 64, seed, steps, 1, guidance)
    read = read_images(evaluator, images)["attributes"]
    hits = {name: [] for name in ATTRIBUTES}
    shares = []
    for i, scene in enumerate(scenes):  # as the toyworld metric backend: the attributes the prompt names
        named = parse_prompt(scene.prompt())
        for name, value in named.items():
            hits[name].append(read[name][i] == value)
        shares.append(alignment(read, i, named))
    return {"alignment": sum(shares) / len(shares),
            "per_attribute": {k: sum(v) / len(v) for k, v in hits.items() if v}, "images": images}
