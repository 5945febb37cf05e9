"""recsys: attention-based sequential recommendation, from raw logs to served lists."""

import os

# polars allocates through its bundled jemalloc, which by default keeps freed pages for
# 10 s; a pipeline that builds and drops several copies of a large table then holds all
# of them at once. Returning pages after 0.2 s cuts prepare's peak memory by about a
# quarter at no measurable cost in time. It must be set before polars is first imported,
# and a value the user set is kept.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:200,muzzy_decay_ms:0")

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use, so that `recsys --help` does not pay for torch and faiss.
    if name == "Recommender":
        from recsys.recommender import Recommender

        return Recommender
    if name == "compare":
        from recsys.comparison import compare

        return compare
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
