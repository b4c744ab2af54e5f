"""Methods, one file each, registered by name in METHODS (used to create and to load)."""

from imprint.methods.base import METHODS, Method, Subject, register
from imprint.methods import full, lora, textual_inversion  # noqa: F401,E402  (they register)

__all__ = ["METHODS", "Method", "Subject", "register"]
