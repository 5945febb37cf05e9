"""The model bundle: one folder with everything needed to score, behind every door.

``bundle.json`` (format, model kind, model/training config, dataset identity),
``weights.pt`` (a state dict; loads with ``weights_only=True``), the item and user
vocabularies, ``histories.parquet`` (each known user's whole history) and the faiss item
index (``items.faiss``, ``index.json``), so scoring needs no access to the training data.
The batch job, the Python API, ``recsys evaluate`` and the MLflow model all load it
through :func:`load_bundle`.
"""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import torch

from recsys.data.dataset import SequenceData, gather_ragged, list_column_to_ragged
from recsys.data.prepare import SEQUENCES_PART
from recsys.io import (
    atomic_dir,
    check_output_folder,
    json_has_keys,
    read_json,
    sha256_file,
    verify_files,
)
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.models.scorers import MODEL_KINDS, MostPopular, SASRecScorer, Scorer
from recsys.retrieval.index import IndexConfig, ItemIndex

FORMAT = "recsys-bundle"
VERSION = 1
ARTIFACT_PATH = "bundle"  # where a training run logs the bundle in MLflow
# Every file of a bundle besides bundle.json, which records their checksums.
FILES = (
    "weights.pt",
    "vocab_items.parquet",
    "vocab_users.parquet",
    "histories.parquet",
    "items.faiss",
    "index.json",
)
SMALL_LOOKUP = 32  # ID lookups up to this size go through a dict (see Bundle._lookup)
REDO = "the model bundle is damaged: train it again or load another copy"


@dataclass
class Bundle:
    """A loaded bundle."""

    path: Path
    meta: dict[str, Any]
    scorer: Scorer
    item_vocab: pl.DataFrame  # item_idx, item_id[, title, genres]
    user_vocab: pl.DataFrame  # user_idx, user_id
    index: ItemIndex
    _histories: tuple[np.ndarray, np.ndarray] | None = None
    _item_ids: np.ndarray | None = None
    _indexes: dict[str, tuple[Any, np.ndarray]] = field(default_factory=dict)
    _dicts: dict[str, dict[str, int]] = field(default_factory=dict)
    _features: Any = None
    _plans: dict[str, Any] = field(default_factory=dict)  # compiled re-ranking configs

    @property
    def dataset(self) -> dict[str, Any]:
        return self.meta["dataset"]

    @property
    def history(self) -> str:
        """Whether the doors show history items, as the model was trained to decide:
        ``exclude`` or ``include`` (bundles from before the setting: their
        ``include_seen_in_eval``)."""
        trained = self.meta.get("train_config", {})
        if trained.get("history") in ("exclude", "include"):
            return trained["history"]
        return "include" if trained.get("include_seen_in_eval") else "exclude"

    def exclude_seen(self, history: str = "auto") -> bool:
        """Whether a door leaves history items out: ``history`` ``auto`` (the model's
        choice), ``exclude`` or ``include``."""
        if history not in ("auto", "exclude", "include"):
            raise ValueError(f"history={history!r}: expected 'auto', 'exclude' or 'include'")
        return (self.history if history == "auto" else history) == "exclude"

    @property
    def num_items(self) -> int:
        return self.item_vocab.height

    def user_indices(self, user_ids: Iterable[Any]) -> tuple[np.ndarray, list[str]]:
        """``user_idx`` of each raw user ID (in order; 0 where unknown), and the unknown IDs."""
        return self._lookup("user", user_ids)

    def item_indices(self, item_ids: Iterable[Any]) -> tuple[np.ndarray, list[str]]:
        """``item_idx`` of each raw item ID (in order; 0 where unknown), and the unknown IDs."""
        return self._lookup("item", item_ids)

    @property
    def item_ids(self) -> np.ndarray:
        """Raw item ID by item index (object array of length ``num_items + 1``; 0 → "")."""
        if self._item_ids is None:
            ids = np.full(self.num_items + 1, "", dtype=object)
            vocab = self.item_vocab
            ids[vocab["item_idx"].to_numpy()] = vocab["item_id"].to_numpy()
            self._item_ids = ids
        return self._item_ids

    @property
    def features(self) -> Any:
        """The items' genres, unit embeddings and release dates
        (:class:`recsys.allocation.features.ItemFeatures`), built once."""
        if self._features is None:
            from recsys.allocation.features import ItemFeatures

            with torch.no_grad():
                self._features = ItemFeatures.build(self.item_vocab, self.scorer.item_vectors())
        return self._features

    def _lookup(self, kind: str, ids: Iterable[Any]) -> tuple[np.ndarray, list[str]]:
        # A hash index built once per bundle: a polars join per call cost about a
        # millisecond, most of a single-user REST request.
        if kind not in self._indexes:
            vocab = self.user_vocab if kind == "user" else self.item_vocab
            self._indexes[kind] = (
                pd.Index(vocab[f"{kind}_id"].to_numpy(), dtype=object),
                vocab[f"{kind}_idx"].to_numpy().astype(np.int64),
            )
        index, idx = self._indexes[kind]
        raw = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=object)
        raw = raw.astype(str).astype(object)  # raw IDs are text at every door
        if len(raw) <= SMALL_LOOKUP:
            # get_indexer costs ~60 µs even for one ID: a dict answers a single-user REST
            # request 100x faster.
            if kind not in self._dicts:
                self._dicts[kind] = dict(zip(index.to_numpy(), range(len(index)), strict=True))
            pos = np.array([self._dicts[kind].get(r, -1) for r in raw], dtype=np.int64)
        else:
            pos = index.get_indexer(raw)
        return np.where(pos >= 0, idx[pos], 0), raw[pos < 0].tolist()

    def histories_of(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Known users' (``user_idx`` > 0) whole histories, in order, as ``(flat, offsets)``."""
        flat, offsets = self.histories()
        return gather_ragged(flat, offsets[users - 1], offsets[users])

    def histories(self) -> tuple[np.ndarray, np.ndarray]:
        """Every known user's whole history as ``(flat item_idx, offsets)``, by user_idx.

        User ``u``'s items (time order) are ``flat[offsets[u - 1]:offsets[u]]``.
        """
        if self._histories is None:
            try:
                df = pl.read_parquet(self.path / "histories.parquet")
            except (pl.exceptions.PolarsError, OSError) as e:
                raise ValueError(
                    f"{str(self.path / 'histories.parquet')!r} cannot be read "
                    f"({type(e).__name__}); {REDO}"
                ) from None
            self._histories = list_column_to_ragged(df["item_idx"])
        return self._histories


def save_bundle(
    path: str | Path,
    kind: str,
    weights: dict[str, torch.Tensor],
    data: SequenceData,
    meta: dict[str, Any],
    index: IndexConfig | None = None,
) -> Path:
    """Write a bundle folder atomically.

    Parameters
    ----------
    path : str or Path
        The folder to (re)write.
    kind : {"sasrec", "most-popular"}
        The model kind.
    weights : dict of tensors
        SASRec's state dict, or ``{"counts": ...}`` for most-popular.
    data : SequenceData
        The prepared dataset the model was trained on (vocabularies, histories).
    meta : dict
        JSON-ready extras: ``model_config`` (SASRec), ``train_config``, anything else.
    index : IndexConfig, optional
        The faiss index over the item vectors (default: chosen by catalogue size).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind {kind!r} is unknown; expected one of {MODEL_KINDS}")
    owned = ("bundle.json", *FILES)
    check_output_folder(
        path,
        kind="a model bundle",
        owned=owned,
        is_ours=lambda p: json_has_keys(p / "bundle.json", ("format", "version", "kind")),
    )
    doc = {"format": FORMAT, "version": VERSION, "kind": kind, "dataset": data.dataset_info()}
    doc.update(meta)
    with atomic_dir(path, owned=owned) as tmp:
        torch.save(weights, tmp / "weights.pt")
        for name in ("vocab_items.parquet", "vocab_users.parquet"):
            shutil.copyfile(data.path / name, tmp / name)
        pl.read_parquet(data.path / SEQUENCES_PART, columns=["user_idx", "item_idx"]).write_parquet(
            tmp / "histories.parquet"
        )
        scorer = _scorer(kind, doc, weights)
        ItemIndex(scorer.item_vectors().numpy(), index).save(tmp)
        doc["files"] = {name: {"sha256": sha256_file(tmp / name)} for name in FILES}
        (tmp / "bundle.json").write_text(json.dumps(doc, indent=2, default=str))
    return Path(path)


def _scorer(kind: str, meta: dict[str, Any], weights: dict[str, torch.Tensor]) -> Scorer:
    if kind == "sasrec":
        # Bundles from before the repeat term have no repeat_bias key: they had none.
        model = SASRec(SASRecConfig(**{"repeat_bias": False, **meta["model_config"]}))
        model.load_state_dict(weights)
        return SASRecScorer(model)
    return MostPopular(weights["counts"].numpy())


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle folder written by :func:`save_bundle`, verifying its files' checksums.

    Raises
    ------
    ValueError
        If ``path`` is not a bundle, has another format version, or a file is missing,
        differs from its checksum or cannot be read; one line naming the file.
    """
    path = Path(path)
    doc_path = path / "bundle.json"
    if not doc_path.is_file():
        raise ValueError(f"{str(path)!r} is not a model bundle: no bundle.json")
    meta = read_json(doc_path, f"a model bundle's description; {REDO}")
    if not isinstance(meta, dict) or (meta.get("format"), meta.get("version")) != (
        FORMAT,
        VERSION,
    ):
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else None
        raise ValueError(
            f"{str(doc_path)!r}: format and version {found!r}; expected {FORMAT!r} version "
            f"{VERSION}"
        )
    if meta.get("kind") not in MODEL_KINDS:
        raise ValueError(f"{str(doc_path)!r}: model kind {meta.get('kind')!r} is unknown; {REDO}")
    if "files" in meta:
        verify_files(path, meta["files"], REDO)
    else:
        warnings.warn(
            f"bundle {str(path)!r} was written by an older recsys and has no checksums; "
            "its files are not verified",
            stacklevel=2,
        )
    try:
        weights = torch.load(path / "weights.pt", weights_only=True)
        scorer = _scorer(meta["kind"], meta, weights)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError) as e:
        # torch's own message advises weights_only=False, which would run arbitrary code.
        raise ValueError(
            f"{str(path / 'weights.pt')!r} cannot be read as this bundle's weights "
            f"({type(e).__name__}); {REDO}"
        ) from None
    try:
        item_vocab = pl.read_parquet(path / "vocab_items.parquet")
        user_vocab = pl.read_parquet(path / "vocab_users.parquet")
    except (pl.exceptions.PolarsError, OSError) as e:
        raise ValueError(f"{str(path)!r}: a vocabulary cannot be read ({e}); {REDO}") from None
    try:
        index = ItemIndex.load(path)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(
            f"{str(path)!r}: the item index (items.faiss, index.json) cannot be read "
            f"({type(e).__name__}); {REDO}"
        ) from None
    return Bundle(
        path=path,
        meta=meta,
        scorer=scorer,
        item_vocab=item_vocab,
        user_vocab=user_vocab,
        index=index,
    )


def resolve_model(spec: str, tracking_uri: str | None = None) -> Path:
    """A local bundle folder for ``spec``: a folder, an MLflow run id or ``models:/name/v``.

    Run and registry artifacts are downloaded through MLflow (cached in a temp folder).
    """
    if Path(spec).is_dir():
        return Path(spec)
    if Path(spec).exists():
        raise ValueError(
            f"model {spec!r} is a file; expected a bundle folder, a run id or models:/"
        )
    if "/" in spec and ":/" not in spec:  # a path, not an MLflow id or URI: touch no store
        raise ValueError(f"model {spec!r}: no such bundle folder")
    import mlflow
    from mlflow.exceptions import MlflowException

    from recsys.tracking import check_reachable, resolve_uri

    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        if spec.startswith("models:/"):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
            # A pyfunc model keeps the bundle among its artifacts.
            for candidate in (local / "artifacts" / ARTIFACT_PATH, local / ARTIFACT_PATH):
                if candidate.is_dir():
                    return candidate
            return local
        return Path(mlflow.artifacts.download_artifacts(run_id=spec, artifact_path=ARTIFACT_PATH))
    except MlflowException as e:
        raise ValueError(
            f"model {spec!r} is neither a folder nor a run id / models:/ URI with a "
            f"{ARTIFACT_PATH!r} artifact at {uri!r}: {e.message}"
        ) from e
