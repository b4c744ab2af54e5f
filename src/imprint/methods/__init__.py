"""Methods, one file each, registered by name in METHODS (used to create and to load).
Every module of this package is imported here, so a new method is a new file."""

from imprint.methods.base import METHODS, Method, Subject, register
from imprint.util import import_all

import_all(__name__, __path__, skip=("base", "peft_io", "adapter", "layers"))

__all__ = ["METHODS", "Method", "Subject", "register"]
