"""Loss terms, one file each; the objective of a step is the sum of the enabled ones.
Every module of this package is imported here, so a new term is a new file."""

from imprint.objectives.base import TERMS, Batch, LossTerm, Objective, TermContext, register_term
from imprint.util import import_all

import_all(__name__, __path__)

__all__ = ["TERMS", "Batch", "LossTerm", "Objective", "TermContext", "register_term"]
