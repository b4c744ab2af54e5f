"""Model families, one file each, chosen from the model folder's model_index.json.
Every module of this package is imported here, so a new family is a new file."""

from __future__ import annotations

from imprint.families.base import FAMILIES, Family, model_index, register_family, resolve_model
from imprint.families.sd import StableDiffusionFamily
from imprint.util import import_all
from imprint.util.errors import ImprintError

import_all(__name__, __path__)


def pipeline_class_name(model: str) -> str:
    """`_class_name` of a model's model_index.json (a local folder, or a hub id's file)."""
    try:
        return model_index(resolve_model(model))["_class_name"]
    except KeyError as e:
        raise ImprintError(f"--model {model}: its model_index.json has no `_class_name`; not a diffusers pipeline "
                           "folder") from e


def family_class(model: str, name: str | None = None) -> type[Family]:
    """The family of a model: by name (from a run's metadata) or detected from its folder."""
    if name is not None:
        if name not in FAMILIES:
            raise ImprintError(f"model family {name!r} is not known to this imprint; upgrade imprint")
        return FAMILIES[name]
    class_name = pipeline_class_name(model)
    for family in FAMILIES.values():
        if class_name in family.pipeline_class_names:
            return family
    known = ", ".join(n for f in FAMILIES.values() for n in f.pipeline_class_names)
    raise ImprintError(f"--model {model}: a {class_name}, which imprint does not train yet; it trains {known}")


def load_family(model: str, name: str | None = None) -> Family:
    return family_class(model, name)(model)


def load_pipeline(model: str, dtype=None, name: str | None = None):
    """The base model as its family's diffusers pipeline."""
    import torch

    return family_class(model, name).load_pipeline(model, dtype or torch.float32)


__all__ = ["FAMILIES", "Family", "StableDiffusionFamily", "family_class", "load_family", "load_pipeline", "register_family",
           "resolve_model"]
