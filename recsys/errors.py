"""Domain exceptions: failures that are not bad input but still get one clear line."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""
