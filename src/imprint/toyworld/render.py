"""The toy world's renderer: deterministic 64x64 scenes of one object on a background.

A scene is a shape in a colour with a surface pattern, at a position and scale, on a
scene-like background; every scene has a DreamBench-style prompt ("a red striped star on the
beach, top left"). The same (spec, seed) always gives the same pixels.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled: smooth edges at 64 px

# (a hexagon was tried and dropped: at 64 px the evaluator confused it with the circle)
SHAPES = ["circle", "square", "triangle", "star", "heart", "diamond", "moon", "cross"]
COLOURS = {
    "red": (214, 39, 40), "orange": (255, 127, 14), "yellow": (240, 210, 30),
    "green": (44, 160, 44), "blue": (31, 90, 220), "purple": (148, 60, 189),
    "pink": (247, 120, 190), "white": (245, 245, 245),
}
PATTERNS = ["plain", "striped", "dotted", "checkered"]
# background -> (how a prompt says where the object is, base colour, texture kind)
BACKGROUNDS = {
    "grass": ("on the grass", (76, 140, 60), "blades"),
    "sand": ("on the beach", (222, 200, 150), "grain"),
    "snow": ("in the snow", (232, 238, 246), "grain"),
    "water": ("on the water", (50, 110, 170), "waves"),
    "brick": ("on a brick street", (150, 75, 60), "bricks"),
    "sky": ("in the sky", (140, 190, 240), "clouds"),
    "wood": ("on a wooden floor", (150, 105, 60), "planks"),
    "plain": ("on a plain background", (128, 128, 128), "flat"),
}
# a 3x3 grid of positions; the prompt names it ("top left", "centre", ...)
POSITIONS = {
    "top left": (0.27, 0.27), "top": (0.5, 0.27), "top right": (0.73, 0.27),
    "left": (0.27, 0.5), "centre": (0.5, 0.5), "right": (0.73, 0.5),
    "bottom left": (0.27, 0.73), "bottom": (0.5, 0.73), "bottom right": (0.73, 0.73),
}
SCALES = {"small": 0.3, "large": 0.46}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    pattern: str
    background: str
    position: str = "centre"
    scale: str = "large"
    emblem: tuple[str, str, str] | None = None  # identity detail of a subject (3 colours)

    def prompt(self, token: str | None = None, with_position: bool = True) -> str:
        where = BACKGROUNDS[self.background][0]
        pattern = "" if self.pattern == "plain" else f" {self.pattern}"
        subject = f"{token} {self.shape}" if token else self.shape
        article = "an" if self.colour[0] in "aeiou" else "a"
        text = f"{article} {self.colour}{pattern} {subject} {where}"
        return f"{text}, {self.position}" if with_position else text


def random_scene(rng: random.Random, **fixed) -> Scene:
    """A scene with every attribute drawn uniformly, except those given."""
    choice = {
        "shape": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)),
        "pattern": rng.choice(PATTERNS), "background": rng.choice(list(BACKGROUNDS)),
        "position": rng.choice(list(POSITIONS)), "scale": rng.choice(list(SCALES)),
    }
    choice.update(fixed)
    return Scene(**choice)


# --- shapes -------------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    def ring(n, radius, start):
        return [(cx + radius * math.cos(start + 2 * math.pi * k / n),
                 cy + radius * math.sin(start + 2 * math.pi * k / n)) for k in range(n)]

    if shape == "square":
        return ring(4, r * 1.25, math.pi / 4)
    if shape == "triangle":
        return [(x, y + r * 0.2) for x, y in ring(3, r * 1.25, -math.pi / 2)]
    if shape == "diamond":
        return [(cx, cy - r * 1.15), (cx + r * 0.8, cy), (cx, cy + r * 1.15), (cx - r * 0.8, cy)]
    if shape == "star":
        outer, inner = ring(5, r * 1.2, -math.pi / 2), ring(5, r * 0.5, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, b = r * 0.38, r * 1.05
        return [(cx - a, cy - b), (cx + a, cy - b), (cx + a, cy - a), (cx + b, cy - a),
                (cx + b, cy + a), (cx + a, cy + a), (cx + a, cy + b), (cx - a, cy + b),
                (cx - a, cy + a), (cx - b, cy + a), (cx - b, cy - a), (cx - a, cy - a)]
    return None


def shape_mask(shape: str, cx: float, cy: float, r: float) -> Image.Image:
    big = SIZE * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    s = SUPERSAMPLE
    cx, cy, r = cx * s, cy * s, r * s
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "moon":  # a crescent: a disc with an offset disc cut out
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ox = cx + 0.6 * r
        draw.ellipse((ox - 0.72 * r, cy - 0.72 * r, ox + 0.72 * r, cy + 0.72 * r), fill=0)
    elif shape == "heart":
        lobe = r * 0.55
        draw.ellipse((cx - 2 * lobe, cy - lobe * 1.6, cx, cy + lobe * 0.4), fill=255)
        draw.ellipse((cx, cy - lobe * 1.6, cx + 2 * lobe, cy + lobe * 0.4), fill=255)
        draw.polygon([(cx - 1.95 * lobe, cy - lobe * 0.2), (cx + 1.95 * lobe, cy - lobe * 0.2),
                      (cx, cy + r * 1.15)], fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=255)
    return mask.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


# --- surfaces -----------------------------------------------------------------------------
def _shade(rgb, factor):
    return tuple(int(max(0, min(255, c * factor))) for c in rgb)


def pattern_layer(colour: str, pattern: str, cx: float, cy: float, r: float) -> Image.Image:
    base = COLOURS[colour]
    second = _shade(base, 0.45) if colour != "white" else (60, 60, 60)
    layer = Image.new("RGB", (SIZE, SIZE), base)
    draw = ImageDraw.Draw(layer)
    step = max(3, int(r / 2.2))
    if pattern == "striped":
        for y in range(int(cy - 2 * r), int(cy + 2 * r), 2 * step):
            draw.rectangle((0, y, SIZE, y + step - 1), fill=second)
    elif pattern == "dotted":
        for y in range(int(cy - 2 * r), int(cy + 2 * r), 2 * step):
            for x in range(int(cx - 2 * r), int(cx + 2 * r), 2 * step):
                draw.ellipse((x, y, x + step - 1, y + step - 1), fill=second)
    elif pattern == "checkered":
        for i, y in enumerate(range(int(cy - 2 * r), int(cy + 2 * r), step)):
            for j, x in enumerate(range(int(cx - 2 * r), int(cx + 2 * r), step)):
                if (i + j) % 2:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=second)
    return layer


def background(kind: str, rng: np.random.Generator) -> Image.Image:
    _, base, texture = BACKGROUNDS[kind]
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = base
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    if texture == "grain":
        img += rng.normal(0, 10, (SIZE, SIZE, 1))
    elif texture == "blades":
        img += rng.normal(0, 22, (SIZE, SIZE, 1)) * np.array([0.6, 1.0, 0.5])
    elif texture == "waves":
        phase = rng.uniform(0, 2 * np.pi)
        img += (18 * np.sin(yy / 3.0 + 0.6 * np.sin(xx / 7.0) + phase))[..., None]
    elif texture == "bricks":
        offset = rng.integers(0, 8)
        mortar = (yy % 8 < 1) | (((xx + offset + (yy // 8 % 2) * 8) % 16) < 1)
        img[mortar] = (200, 195, 185)
        img += rng.normal(0, 8, (SIZE, SIZE, 1))
    elif texture == "clouds":
        for _ in range(3):
            cx, cy, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(6, 12)
            cloud = np.exp(-(((xx - cx) ** 2) / (2 * r * r) + ((yy - cy) ** 2) / (0.5 * r * r)))
            img += cloud[..., None] * (np.array([250, 250, 252]) - img) * 0.9
    elif texture == "planks":
        offset = rng.integers(0, 10)
        img += (14 * np.sin(xx / 1.7 + rng.uniform(0, 6)))[..., None] * 0.5
        img[(yy + offset) % 11 < 1] *= 0.6
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def draw_emblem(image: Image.Image, colours: tuple[str, str, str], cx: float, cy: float, r: float) -> None:
    """Three vertical bars in three colours at the object's centre: a subject's identity."""
    draw = ImageDraw.Draw(image)
    w, h = max(1.0, r * 0.28), max(2.0, r * 0.8)
    for k, name in enumerate(colours):
        x0 = cx - 1.5 * w + k * w
        draw.rectangle((round(x0), round(cy - h / 2), round(x0 + w) - 1, round(cy + h / 2)),
                       fill=COLOURS[name])


def render(scene: Scene, seed: int = 0) -> Image.Image:
    """The scene as a 64x64 RGB image; the seed jitters position, scale and texture."""
    return render_with_mask(scene, seed)[0]


def render_with_mask(scene: Scene, seed: int = 0) -> tuple[Image.Image, Image.Image]:
    """The scene and its object's true mask ('L', 255 where the object covers at least half a pixel)."""
    rng = np.random.default_rng(seed)
    fx, fy = POSITIONS[scene.position]
    cx = fx * SIZE + rng.uniform(-2.5, 2.5)
    cy = fy * SIZE + rng.uniform(-2.5, 2.5)
    r = SCALES[scene.scale] * SIZE / 2 * rng.uniform(0.92, 1.08)
    image = background(scene.background, rng)
    mask = shape_mask(scene.shape, cx, cy, r)
    image.paste(pattern_layer(scene.colour, scene.pattern, cx, cy, r), (0, 0), mask)
    if scene.emblem:  # on the moon, the emblem sits in the crescent's thick part
        draw_emblem(image, scene.emblem, cx - 0.5 * r if scene.shape == "moon" else cx, cy, r)
    return image, mask.point(lambda v: 255 if v >= 128 else 0)
