"""Model families: one file each. Only Stable Diffusion 1.x/2.x so far."""

from imprint.families.sd import StableDiffusionFamily, load_pipeline, resolve_model

FAMILIES = {"sd": StableDiffusionFamily}


def load_family(model: str, family: str = "sd"):
    return FAMILIES[family](model)


__all__ = ["FAMILIES", "StableDiffusionFamily", "load_family", "load_pipeline", "resolve_model"]
