"""Evaluation: metric backends (DreamBench, ...), the evaluate command, reports, selection."""

from imprint.evaluate import dreambench  # noqa: F401  (registers the backend)
from imprint.evaluate.backends import BACKENDS, MetricBackend, Scores, register_backend
from imprint.toyworld import backend as _toyworld  # noqa: F401,E402  (registers "toyworld")

__all__ = ["BACKENDS", "MetricBackend", "Scores", "register_backend"]
