"""recsys: attention-based sequential recommendation, from raw logs to served lists."""

__version__ = "0.1.0"
