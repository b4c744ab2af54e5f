"""Metric backends, by name (`--metrics NAME`): each turns images into the same report rows.

A backend takes, per prompt, the generated images and the prompt's text (identifier removed),
the real subject images, and the images of the plain class prompt; it returns per-image
scores, per-prompt rows and a summary. `evaluate` and the report never ask which backend ran.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from PIL import Image

from imprint.util.errors import ImprintError

BACKENDS: dict[str, type["MetricBackend"]] = {}
# backends live where their world lives (the toy world's in toyworld/) and are found through this
# entry-point group of the installed package, so evaluation imports none of them
ENTRY_POINTS = "imprint.metric_backends"


def register_backend(cls):
    BACKENDS[cls.name] = cls
    return cls


def available_backends() -> dict[str, type["MetricBackend"]]:
    for entry in entry_points(group=ENTRY_POINTS):
        if entry.name not in BACKENDS:
            entry.load()  # the module registers its backend
    return BACKENDS


def make_backend(name: str, **options) -> "MetricBackend":
    backends = available_backends()
    if name not in backends:
        raise ImprintError(f"--metrics {name}: unknown backend; choose one of {', '.join(sorted(backends))}")
    return backends[name](**options)


@dataclass
class Scores:
    summary: dict                      # metric -> {"mean", "low", "high", "n"}
    prompts: list[dict]                # one row per prompt: prompt, metric means
    images: list[dict] = field(default_factory=list)  # one row per generated image


class MetricBackend(ABC):
    name = "base"
    metrics: tuple[str, ...] = ()      # summary keys, in report order
    protocol: dict = {}                # the choices made, written into the report

    image_feature_dim: int | None = None  # where image_features() is given

    def image_features(self, images: list[Image.Image]):
        """(N, image_feature_dim) features of the backend's image model, for methods that
        condition on a photo (DisenBooth); only backends with `image_feature_dim` give them."""
        raise ImprintError(f"the {self.name} metric backend gives no image features")

    def default_prompts(self, token: str, class_name: str) -> list[str]:
        """The evaluation prompts when the user gives no --prompts file."""
        from imprint.evaluate.prompts import dreambench_prompts

        return dreambench_prompts(token, class_name)

    def training_prompts(self, token: str, class_name: str) -> list[str]:
        """Prompts a method may train on (RPO's negatives): none of them is an evaluation prompt."""
        return [f"a {token} {class_name} {place}" for place in (
            "on the surface of the moon", "in a subway station", "in a desert at sunset", "under the sea",
            "in a painting by Van Gogh")] + [f"a {token} {class_name} made of {stuff}" for stuff in ("lego", "glass")] \
            + [f"a green {token} {class_name}"]

    @abstractmethod
    def score(self, generated: dict[str, list[Image.Image]], text_prompts: dict[str, str],
              real: list[Image.Image], class_images: list[Image.Image]) -> Scores:
        """Per-image scores, per-prompt rows and a summary of one model's images."""

    @abstractmethod
    def score_real(self, real: list[Image.Image]) -> dict:
        """The real images scored against each other (leave-one-out): the ceiling row."""

    @abstractmethod
    def subject_reference(self, real: list[Image.Image]):
        """What subject_and_text compares against, computed once per run from the real photos."""

    @abstractmethod
    def subject_and_text(self, images: list[Image.Image], text: str, reference) -> tuple[float, float]:
        """(image similarity to the subject, text alignment) for checkpoint selection."""
