"""How well a toy-world model draws what a prompt asks: the evaluator reads its images back.

`prompt_alignment` generates one image per scene prompt and reports, per attribute, the share
read back as prompted, and their mean (the alignment metric). `heldout_scenes` draws scenes
whose shape/colour pair pre-training never showed; `seen_scenes` draws the others.
"""

from __future__ import annotations

import random

import torch

from imprint.toyworld.backend import parse_prompt
from imprint.toyworld.evaluator import ATTRIBUTES, load_evaluator, read_images
from imprint.toyworld.pretrain import HELD_OUT
from imprint.toyworld.render import BACKGROUNDS, COLOURS, PATTERNS, POSITIONS, SHAPES, Scene


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


@torch.no_grad()
def generate_scenes(pipe, scenes: list[Scene], steps: int = 20, guidance: float = 4.0, seed: int = 0,
                    batch_size: int = 32) -> list:
    images = []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        generator = torch.Generator("cpu").manual_seed(seed + start)
        out = pipe([s.prompt() for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   height=64, width=64, generator=generator, output_type="pil")
        images += out.images
    return images


def prompt_alignment(pipe, scenes: list[Scene], evaluator=None, **generation) -> dict:
    """-> {"alignment": mean share of attributes read back, "per_attribute": {...}}."""
    evaluator = evaluator or load_evaluator()
    images = generate_scenes(pipe, scenes, **generation)
    read = read_images(evaluator, images)["attributes"]
    hits = {name: [] for name in ATTRIBUTES}
    shares = []
    for i, scene in enumerate(scenes):  # as the toyworld metric backend: the attributes the prompt names
        named = parse_prompt(scene.prompt())
        for name, value in named.items():
            hits[name].append(read[name][i] == value)
        shares.append(sum(read[k][i] == v for k, v in named.items()) / len(named))
    return {"alignment": sum(shares) / len(shares),
            "per_attribute": {k: sum(v) / len(v) for k, v in hits.items() if v}, "images": images}
