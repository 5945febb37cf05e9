"""The servable MLflow model: the bundle behind ``mlflow models serve``.

A request is a table with one row per question: ``user_id`` (a known user) or
``history`` (a list of raw item IDs, oldest first, for a user the model has never seen),
and optionally ``k`` (default 10). The answer has one row per recommended item:
``request`` (the row number of the question), ``user_id``, ``rank`` (1 = best),
``item_id``, ``score`` — the same lists the Python API returns.

    curl http://127.0.0.1:5000/invocations -H 'Content-Type: application/json' -d '
      {"dataframe_records": [{"user_id": "196", "k": 5}, {"history": ["50", "172"]}]}'
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import polars as pl

from recsys.bundle import ARTIFACT_PATH

MODEL_NAME = "model"  # the name of the logged model inside a training run
DEFAULT_K = 10


def _missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and math.isnan(value)


class RecsysModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around :class:`recsys.Recommender` loaded from the bundled folder."""

    def load_context(self, context: Any) -> None:
        from recsys.recommender import Recommender

        self.rec = Recommender.load(Path(context.artifacts[ARTIFACT_PATH]))

    # Only the request is annotated: MLflow derives the input schema from these hints and
    # warns about Any.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Answer a request table (see the module docstring) as a pandas DataFrame."""
        from mlflow.exceptions import MlflowException

        try:
            return self._answer(pd.DataFrame(model_input))
        except ValueError as e:
            raise MlflowException.invalid_parameter_value(str(e)) from e

    def _answer(self, df: pd.DataFrame) -> pd.DataFrame:
        if not {"user_id", "history"} & set(df.columns):
            raise ValueError(
                f"a request needs a 'user_id' or a 'history' column; got {list(df.columns)}"
            )
        parts = []
        for i, row in enumerate(df.to_dict("records")):
            user, history = row.get("user_id"), row.get("history")
            k = row.get("k")
            k = DEFAULT_K if _missing(k) else k
            if isinstance(k, float) and k.is_integer():
                k = int(k)
            if not _missing(user):
                out = self.rec.recommend([str(user)], k=k)
            elif history is not None and not _missing(history):
                if isinstance(history, str):
                    history = [h for h in history.split(",") if h.strip()]
                out = self.rec.recommend_for_history(
                    [str(h).strip() for h in history], k=k
                ).with_columns(pl.lit(None, dtype=pl.String).alias("user_id"))
            else:
                raise ValueError(f"request row {i}: give a user_id or a non-empty history")
            parts.append(
                out.select(pl.lit(i).alias("request"), "user_id", "rank", "item_id", "score")
            )
        return pl.concat(parts).to_pandas()
