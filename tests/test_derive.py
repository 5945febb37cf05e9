"""Settings derived from the data's statistics (recsys.training.derive)."""

import dataclasses

import pytest

from recsys.data.dataset import SequenceData
from recsys.models.sasrec import SASRecConfig
from recsys.training.derive import (
    SequenceStats,
    batch_positions,
    derive_dropout,
    derive_lr,
    derive_max_len,
    resolve,
    sequence_stats,
)
from recsys.training.fit import FitConfig, with_data_defaults


def stats(mean: float = 10.0, p90: float = 10.0) -> SequenceStats:
    return SequenceStats(users=100, items=50, mean_length=mean, p90_length=p90)


@pytest.mark.parametrize(
    ("p90", "expected"),
    [(0, 50), (12, 50), (50, 50), (50.5, 100), (120, 150), (242.4, 200), (5000, 200)],
)
def test_window_covers_most_users_within_bounds(p90, expected):
    assert derive_max_len(stats(p90=p90)) == expected


@pytest.mark.parametrize(
    ("mean", "expected"),
    # Amazon Beauty has 6.9 training events per user, ml-100k 104.
    [(0.0, 0.5), (6.9, 0.5), (10.0, 0.5), (31.62, 0.35), (104.0, 0.2), (10_000, 0.2)],
)
def test_dropout_falls_with_events_per_user(mean, expected):
    assert derive_dropout(stats(mean=mean)) == expected


@pytest.mark.parametrize(
    ("positions", "expected"),
    # Amazon Beauty has ~733 target positions a batch of 128 users, ml-100k ~11,306.
    [(0.0, 1e-3), (733, 1e-3), (1000, 1e-3), (4000, 2e-3), (11_306, 3.4e-3), (1e6, 5e-3)],
)
def test_lr_grows_with_the_square_root_of_a_batchs_positions(positions, expected):
    assert derive_lr(positions) == expected


def test_stats_and_resolve_on_a_tiny_dataset(tmp_path, make_prepared):
    # Leave-one-out keeps all but the last two events for training: 1..10 events per
    # user, of which the 9 users with 2 or more can be trained on.
    seqs = [list(range(1, n + 3)) for n in range(1, 11)]
    data = SequenceData.load(make_prepared(tmp_path / "d", seqs))
    s = sequence_stats(data)
    assert (s.users, s.items) == (9, 12)
    assert s.mean_length == pytest.approx(6.0) and s.p90_length == pytest.approx(9.2)

    cfg, notes = resolve(SASRecConfig(), data)
    assert (cfg.max_len, cfg.dropout) == (50, 0.5)
    assert notes[0].startswith("max_len=50: 90% of users have at most 9 training events")
    assert notes[1].startswith("dropout=0.5: 6.0 training events per user")
    # Values given explicitly are kept, and only the rest is derived.
    kept, notes = resolve(SASRecConfig(max_len=7, dropout=0.1), data)
    assert (kept.max_len, kept.dropout, notes) == (7, 0.1, [])
    half, notes = resolve(SASRecConfig(max_len=7), data)
    assert (half.max_len, half.dropout) == (7, 0.5) and len(notes) == 1
    # The most-popular baseline has only the history setting to derive; given, nothing.
    fit_cfg = FitConfig(model="most-popular")
    resolved, notes = with_data_defaults(fit_cfg, data)
    assert resolved == dataclasses.replace(fit_cfg, history="exclude")
    assert len(notes) == 1 and notes[0].startswith("history=exclude: 0.0% of validation")
    fit_cfg = FitConfig(model="most-popular", history="include")
    assert with_data_defaults(fit_cfg, data) == (fit_cfg, [])
    fit_cfg = dataclasses.replace(FitConfig(), sasrec=SASRecConfig(dropout=0.3))
    resolved, notes = with_data_defaults(fit_cfg, data)
    assert (resolved.sasrec.max_len, resolved.sasrec.dropout) == (50, 0.3)
    # Training windows of 2..10 events hold 1..9 targets, 5 a user; a batch of 128 holds
    # all 9 users. With max_len 3 a window holds at most 3: (1 + 2 + 7 x 3) / 9 a user.
    assert batch_positions(data, 50, 128) == pytest.approx(45.0)
    assert batch_positions(data, 50, 4) == pytest.approx(20.0)
    assert batch_positions(data, 3, 9) == pytest.approx(24.0)
    assert resolved.train.lr == 1e-3
    assert any(n.startswith("lr=0.001: 45 target positions a batch of 128") for n in notes)


def test_a_model_needs_the_derived_values():
    with pytest.raises(ValueError, match="max_len and dropout must be set"):
        from recsys.models.sasrec import SASRec

        SASRec(SASRecConfig(num_items=5))


def test_the_train_job_records_the_values_used(tmp_path, make_prepared, successor_sequences):
    import json

    import mlflow

    from pipelines.train import TrainJobConfig, run
    from recsys.options import from_flat

    data = make_prepared(tmp_path / "d", successor_sequences(30, 12))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = from_flat(
        TrainJobConfig,
        {
            "data": str(data),
            "epochs": 1,
            "d_model": 8,
            "progress": False,
            "tracking_uri": uri,
            "output": str(tmp_path / "run"),
        },
        source="test",
    )
    out = run(cfg)
    run_data = mlflow.MlflowClient(uri).get_run(out["run_id"]).data
    assert run_data.params["max_len"] == "50" and run_data.params["dropout"] == "0.5"
    assert run_data.tags["derived_from_data"].startswith("max_len=50: 90% of users")
    bundle = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())
    assert bundle["model_config"]["max_len"] == 50 and bundle["model_config"]["dropout"] == 0.5


def test_recommender_keeps_its_parameters_and_reports_what_was_derived(
    tmp_path, make_prepared, successor_sequences
):
    from recsys import Recommender

    data = make_prepared(tmp_path / "d", successor_sequences(30, 12))
    rec = Recommender(epochs=1, d_model=8, progress=False, dropout=0.1).fit(data)
    assert rec.get_params()["max_len"] is None and rec.get_params()["dropout"] == 0.1
    assert rec.derived_ == {"max_len": 50, "loss": "ce", "lr": 1e-3}
    assert rec.bundle.meta["model_config"]["max_len"] == 50
