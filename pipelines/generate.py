"""Generate job: a deterministic synthetic interaction log (Parquet).

Run it as ``recsys generate ...`` or ``python -m pipelines.generate ...`` (same flags).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from recsys.data.synthetic import SyntheticSpec, generate


@dataclass
class GenerateConfig:
    """Output file and the synthetic log's shape."""

    output: str
    users: int = 2_000
    items: int = 1_000
    interactions: int = 100_000
    seed: int = 0
    clusters: int = 20


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
    )
    return generate(spec, config.output)


if __name__ == "__main__":
    from recsys.cli import main

    sys.exit(main(["generate", *sys.argv[1:]]))
