"""Generate job: a deterministic synthetic interaction log (Parquet).

Run it as ``recsys generate ...`` (``python -m recsys.cli generate ...``), or call :func:`run`.
"""

from __future__ import annotations

from dataclasses import dataclass

from recsys.data.synthetic import SyntheticSpec, generate
from recsys.options import option


@dataclass
class GenerateConfig:
    """Output file and the synthetic log's shape."""

    output: str = option(help="Parquet file to write")
    users: int = option(2_000, "number of users")
    items: int = option(1_000, "catalogue size")
    interactions: int = option(100_000, "total events, at least 3 per user")
    seed: int = option(0, "random seed")
    clusters: int = option(20, "user taste clusters")
    p_repeat: float = option(
        0.0, "probability that an event repeats one of the user's last 5 items (0: none)"
    )


def run(config: GenerateConfig) -> dict[str, int]:
    """Write the synthetic log described by ``config``.

    Parameters
    ----------
    config : GenerateConfig
        The job's config.

    Returns
    -------
    dict
        Rows, users and chunks written.
    """
    spec = SyntheticSpec(
        users=config.users,
        items=config.items,
        interactions=config.interactions,
        seed=config.seed,
        clusters=config.clusters,
        p_repeat=config.p_repeat,
    )
    return generate(spec, config.output)
