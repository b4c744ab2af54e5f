"""Methods, one file each, registered by name in METHODS (used to create and to load).
Every module of this package is imported here, so a new method is a new file."""

from imprint.methods.base import LM_METHODS, METHODS, Method, Subject, register
from imprint.util import import_all

import_all(__name__, __path__, skip=("base", "peft_io", "adapter", "layers", "lm_base", "sparse_delta"))

__all__ = ["LM_METHODS", "METHODS", "Method", "Subject", "register"]
