"""Evaluation prompts: DreamBench's 25 per subject (Ruiz et al. 2023, the DreamBooth dataset,
CC-BY-4.0), or the user's own file.

Objects get 20 recontextualisation + 5 property prompts; live subjects (DreamBench's are dogs
and cats) get the first 10 recontextualisation, 10 accessorisation and the 5 property prompts.
"""

from __future__ import annotations

import re
from pathlib import Path

from imprint.util.errors import ImprintError

_PLACES = [
    "in the jungle", "in the snow", "on the beach", "on a cobblestone street",
    "on top of pink fabric", "on top of a wooden floor", "with a city in the background",
    "with a mountain in the background", "with a blue house in the background",
    "on top of a purple rug in a forest",
]
_MORE_PLACES = [
    "with a wheat field in the background", "with a tree and autumn leaves in the background",
    "with the Eiffel Tower in the background", "floating on top of water",
    "floating in an ocean of milk", "on top of green grass with sunflowers around it",
    "on top of a mirror", "on top of the sidewalk in a crowded street", "on top of a dirt road",
    "on top of a white rug",
]
_ACCESSORIES = [
    "wearing a red hat", "wearing a santa hat", "wearing a rainbow scarf",
    "wearing a black top hat and a monocle", "in a chef outfit", "in a firefighter outfit",
    "in a police outfit", "wearing pink glasses", "wearing a yellow shirt",
    "in a purple wizard outfit",
]
_PROPERTIES = ["red", "purple", "shiny", "wet", "cube shaped"]

OBJECT_PROMPTS = ([f"a {{token}} {{class_name}} {p}" for p in _PLACES + _MORE_PLACES]
                  + [f"a {p} {{token}} {{class_name}}" for p in _PROPERTIES])
LIVE_PROMPTS = ([f"a {{token}} {{class_name}} {p}" for p in _PLACES + _ACCESSORIES]
                + [f"a {p} {{token}} {{class_name}}" for p in _PROPERTIES])
LIVE_CLASSES = {"dog", "cat"}


def is_live(class_name: str) -> bool:
    return class_name.strip().lower() in LIVE_CLASSES


def dreambench_prompts(token: str, class_name: str) -> list[str]:
    templates = LIVE_PROMPTS if is_live(class_name) else OBJECT_PROMPTS
    return [t.format(token=token, class_name=class_name) for t in templates]


def load_prompt_file(path: str | Path, token: str, class_name: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ImprintError(f"--prompts {path}: file not found; pass a text file, one prompt per line")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise ImprintError(f"--prompts {path}: not UTF-8 text ({e.reason}); save it as UTF-8") from e
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ImprintError(f"--prompts {path}: no prompts in the file; write one per line")
    try:
        return [line.format(token=token, class_name=class_name) for line in lines]
    except (KeyError, IndexError, ValueError) as e:
        raise ImprintError(
            f"--prompts {path}: bad placeholder {e}; only {{token}} and {{class_name}} are filled"
        ) from e


def remove_identifier(prompt: str, token: str) -> str:
    """The prompt CLIP-T is scored against: the identifier removed, the class word kept."""
    cleaned = re.sub(rf"(?<!\S){re.escape(token)}(?!\S)", " ", prompt)
    return re.sub(r"\s+", " ", cleaned).strip()
