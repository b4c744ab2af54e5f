"""Held-out subjects: specific object instances whose identity detail (a three-colour emblem)
the base model's pre-training never shows. Each has 5 "photos" in varied scenes, positions and
scales, written as a folder like a real subject's (with each photo's true mask in masks/), and a
class name (its shape)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from imprint.toyworld.render import BACKGROUNDS, COLOURS, PATTERNS, POSITIONS, SCALES, Scene, render_with_mask


@dataclass(frozen=True)
class Subject:
    name: str
    shape: str
    colour: str
    pattern: str
    emblem: tuple[str, str, str]

    @property
    def class_name(self) -> str:
        return self.shape

    def scene(self, background: str, position: str = "centre", scale: str = "large") -> Scene:
        return Scene(self.shape, self.colour, self.pattern, background, position, scale, self.emblem)

    def photo_scenes(self, count: int = 5) -> list[tuple[Scene, int]]:
        """(scene, seed) of each photo: varied backgrounds, positions and scales, fixed by name."""
        rng = random.Random(f"imprint-toyworld-{self.name}")
        backgrounds = rng.sample(list(BACKGROUNDS), count)
        return [(self.scene(bg, rng.choice(list(POSITIONS)), rng.choice(list(SCALES))),
                 rng.randrange(2**31)) for bg in backgrounds]


SUBJECTS = [
    Subject("emblem_star", "star", "red", "plain", ("blue", "white", "green")),
    Subject("striped_circle", "circle", "blue", "striped", ("yellow", "red", "white")),
    Subject("dotted_heart", "heart", "pink", "dotted", ("green", "blue", "yellow")),
    Subject("checkered_square", "square", "orange", "checkered", ("purple", "white", "blue")),
    Subject("plain_triangle", "triangle", "green", "plain", ("red", "yellow", "purple")),
    Subject("striped_diamond", "diamond", "purple", "striped", ("white", "orange", "green")),
    Subject("dotted_moon", "moon", "yellow", "dotted", ("blue", "red", "pink")),
    Subject("plain_cross", "cross", "white", "plain", ("red", "green", "blue")),
    Subject("checkered_star", "star", "blue", "checkered", ("orange", "pink", "yellow")),
    Subject("striped_heart", "heart", "red", "striped", ("white", "blue", "orange")),
]
SUBJECTS_BY_NAME = {s.name: s for s in SUBJECTS}


def write_scenes(scenes: list[tuple[Scene, int]], folder: str | Path, class_name: str) -> Path:
    """Renders of (scene, seed) as NN.png, their true masks in masks/ (for --masks), and class.txt."""
    folder = Path(folder)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for i, (scene, seed) in enumerate(scenes):
        image, mask = render_with_mask(scene, seed)
        image.save(folder / f"{i:02d}.png")
        mask.save(folder / "masks" / f"{i:02d}.png")
    (folder / "class.txt").write_text(class_name + "\n")
    return folder


def write_subject(subject: Subject, folder: str | Path, count: int = 5) -> Path:
    """The subject's photos, as a photo folder."""
    return write_scenes(subject.photo_scenes(count), folder, subject.class_name)


def domain_scenes(subject: Subject, count: int = 10) -> list[tuple[Scene, int]]:
    """(scene, seed) of each image of the subject's domain set: its shape and emblem (what the
    domain shares, as a style does) on objects of every colour and pattern, in varied scenes,
    fixed by name. A domain set, unlike a subject's photos, varies what its class varies."""
    rng = random.Random(f"imprint-toyworld-domain-{subject.name}")
    scenes = []
    for i in range(count):
        scene = Scene(subject.shape, list(COLOURS)[i % len(COLOURS)], rng.choice(PATTERNS),
                      rng.choice(list(BACKGROUNDS)), rng.choice(list(POSITIONS)), rng.choice(list(SCALES)),
                      subject.emblem)
        scenes.append((scene, rng.randrange(2**31)))
    return scenes


def write_domain(subject: Subject, folder: str | Path, count: int = 10) -> Path:
    """The subject's domain set (domain_scenes), as a photo folder."""
    return write_scenes(domain_scenes(subject, count), folder, subject.class_name)


def write_subjects(root: str | Path) -> list[Path]:
    return [write_subject(s, Path(root) / s.name) for s in SUBJECTS]
