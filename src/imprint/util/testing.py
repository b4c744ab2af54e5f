"""Test hooks that stay in the shipped code because what they test is a real process death."""

from __future__ import annotations

import os
import signal


def test_kill(where: str, step: int) -> None:
    """IMPRINT_TEST_KILL="step:5" (or "checkpoint:4", "pretrain:3") SIGKILLs the process there."""
    if os.environ.get("IMPRINT_TEST_KILL") == f"{where}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


test_kill.__test__ = False  # not a pytest test
