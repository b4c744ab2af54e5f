"""Evaluation: metric backends (DreamBench here; others register through the
`imprint.metric_backends` entry points), metrics, the report and the comparison table."""

from imprint.evaluate import dreambench  # noqa: F401  (registers the backend)
from imprint.evaluate.backends import BACKENDS, MetricBackend, Scores, available_backends, make_backend, register_backend

__all__ = ["BACKENDS", "MetricBackend", "Scores", "available_backends", "make_backend", "register_backend"]
