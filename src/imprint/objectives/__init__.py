"""Loss terms, one file each; the objective of a step is the sum of the enabled ones."""

from imprint.objectives.base import TERMS, Batch, LossTerm, Objective, TermContext, register_term
from imprint.objectives import denoise, prior, snr  # noqa: F401,E402  (they register)

__all__ = ["TERMS", "Batch", "LossTerm", "Objective", "TermContext", "register_term"]
