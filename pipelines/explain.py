"""Explain job: why one user gets their recommendations, as a table and a heat map.

Run it as ``recsys explain --model M --user U [--items ...] [--method ...] [--plot F]``.
The table lists, per recommended (or asked-for) item, the history events that made its
score, largest contribution first, with titles where the item vocabulary has them. The
plot draws contributions as a heat map: history events (most recent at the top) by
items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.explain import DEFAULT_METHOD
from recsys.explain.attribution import METHODS
from recsys.io import atomic_file, check_output_file
from recsys.options import option
from recsys.tracking import URI_HELP


@dataclass
class ExplainConfig:
    """Everything the explain job needs."""

    model: str = option(help="MLflow run id, models:/NAME/VERSION, or a bundle folder")
    user: str = option(help="the user to explain (a raw user ID)")
    items: list[str] = option(
        default_factory=list, help="items to explain (raw IDs); none: the user's top k"
    )
    k: int = option(5, "recommendations to explain when no --items are given")
    method: str = option(DEFAULT_METHOD, "how contributions are computed", choices=METHODS)
    top: int = option(5, "history events shown per item")
    plot: str | None = option(None, "also draw a heat map to this .png file")
    tracking_uri: str | None = option(None, "MLflow tracking URI", default_text=URI_HELP)

    def __post_init__(self) -> None:
        if self.k < 1 or self.top < 1:
            raise ValueError(f"k={self.k} and top={self.top} must be at least 1")
        if self.plot is not None and not self.plot.lower().endswith(".png"):
            raise ValueError(f"plot={self.plot!r}: expected a .png file name")


def run(cfg: ExplainConfig) -> dict[str, Any]:
    """Explain; return ``table`` (:meth:`Recommender.explain`'s, all events) and ``text``
    (the ``top`` events per item, with titles where the vocabulary has them)."""
    from recsys.recommender import Recommender

    rec = Recommender.load(cfg.model, tracking_uri=cfg.tracking_uri)
    table = rec.explain(
        [cfg.user], items=cfg.items or None, k=cfg.k, method=cfg.method, top=None
    ).drop("user_id")
    titles = _titles(rec)
    shown = (
        table.filter(pl.col("source") == "history")
        .with_columns(n=pl.int_range(pl.len()).over("item_id"))
        .filter(pl.col("n") < cfg.top)
    )
    lines = [f"user {cfg.user}: {cfg.method} contributions to each item's score"]
    for (item,), rows in shown.group_by("item_id", maintain_order=True):
        lines.append(f"{_name(item, titles)}")
        for r in rows.iter_rows(named=True):
            lines.append(
                f"  {r['contribution']:+8.3f}  {_name(r['history_item_id'], titles)}"
                f"  ({r['position']} events ago)"
            )
        repeat = table.filter((pl.col("item_id") == item) & (pl.col("source") == "repeat"))
        if repeat.height:
            lines.append(f"  {repeat['contribution'][0]:+8.3f}  (the repeat term)")
    if cfg.plot:
        # Only a heat map of ours is replaced; anything else at that name is refused.
        path = check_output_file(cfg.plot, kind="a heat map", is_ours=_is_heat_map)
        heat_map(table, titles, path, f"user {cfg.user} ({cfg.method})")
    return {"table": table, "text": "\n".join(lines)}


PNG_MARK = b"recsys explain"  # the PNG's Software text chunk


def _is_heat_map(path: Path) -> bool:
    with path.open("rb") as f:
        return PNG_MARK in f.read(4096)


def _titles(rec: Any) -> dict[str, str]:
    vocab = rec.bundle.item_vocab
    if "title" not in vocab.columns:
        return {}
    return dict(zip(vocab["item_id"].cast(pl.String), vocab["title"].cast(pl.String), strict=True))


def _name(item: str, titles: dict[str, str]) -> str:
    title = titles.get(item)
    return f"{item} {title}" if title else item


def heat_map(table: pl.DataFrame, titles: dict[str, str], path: Path, title: str) -> None:
    """Contributions (history events by items) as a diverging heat map, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = table.filter(pl.col("source") == "history")
    items = hist["item_id"].unique(maintain_order=True).to_list()
    events = (
        hist.select("position", "history_item_id").unique().sort("position")
    )  # most recent first
    grid = np.zeros((events.height, len(items)))
    row = {p: i for i, p in enumerate(events["position"].to_list())}
    col = {item: j for j, item in enumerate(items)}
    for r in hist.iter_rows(named=True):
        grid[row[r["position"]], col[r["item_id"]]] = r["contribution"]
    limit = float(np.abs(grid).max()) or 1.0
    fig, ax = plt.subplots(figsize=(2 + 1.2 * len(items), 1.5 + 0.35 * events.height))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(
        range(len(items)), [_name(i, titles)[:30] for i in items], rotation=40, ha="right"
    )
    ax.set_yticks(
        range(events.height),
        [
            f"{p}: {_name(i, titles)[:40]}"
            for p, i in zip(events["position"], events["history_item_id"], strict=True)
        ],
    )
    ax.set_xlabel("recommended item")
    ax.set_ylabel("history event (events ago: item)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="contribution to the score")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": PNG_MARK.decode()})
    plt.close(fig)
