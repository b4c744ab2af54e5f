"""Language-model objectives (`imprint lm train --objective NAME`); each registers itself on import."""

from imprint.lm.objectives import dpo, masked_thought, otr, s3ft, spin  # noqa: F401  (register)
from imprint.lm.objectives.base import LM_OBJECTIVES, LMObjective, register_objective

__all__ = ["LM_OBJECTIVES", "LMObjective", "register_objective"]
