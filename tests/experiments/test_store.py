"""The SQLite results store."""

import json
import math
import sqlite3

import pytest

from weightdecay.experiments.store import DB_NAME, Store
from weightdecay.experiments.train import config_key, failed_record, make_config


def record(status="ok", seed=0, val_error=0.25):
    config = make_config(
        optimizer="AdamW", lr=1e-3, weight_decay=0.0, epochs=1, seed=seed
    )
    nan = math.nan
    final = {
        "train_loss": 0.5 if status == "ok" else nan,
        "val_loss": 0.6 if status == "ok" else nan,
        "val_error": val_error if status == "ok" else nan,
        "test_loss": 0.7 if status == "ok" else nan,
        "test_error": 0.3 if status == "ok" else nan,
    }
    return {
        "key": config_key(config),
        "config": config,
        "status": status,
        "diverged_step": 7 if status == "diverged" else None,
        "final": final,
        "curves": {"epoch": [1], "val_error": [final["val_error"]]},
        "wall_s": 1.5,
    }


def test_round_trip_keeps_every_field_including_nan(tmp_path):
    with Store(tmp_path) as store:
        assert store.add(record())
        assert store.add(record("diverged", seed=1))
    with Store(tmp_path) as store:
        got = store.records()
    assert [r["status"] for r in got] == ["ok", "diverged"]
    assert got[0] == record()
    assert got[1]["diverged_step"] == 7 and math.isnan(got[1]["final"]["val_error"])


def test_a_finished_run_is_stored_once(tmp_path):
    with Store(tmp_path) as store:
        assert store.add(record(val_error=0.25))
        assert not store.add(record(val_error=0.99))
        assert len(store) == 1
        assert store.records()[0]["final"]["val_error"] == 0.25


def test_a_failed_row_is_replaced_by_a_finished_one_but_not_the_reverse(tmp_path):
    ok = record()
    with Store(tmp_path) as store:
        assert store.add(failed_record(ok["config"], "worker died"))
        assert store.keys(finished=True) == set()
        assert store.add(ok)
        assert not store.add(failed_record(ok["config"], "again"))
        assert [r["status"] for r in store.records()] == ["ok"]
        assert store.keys(finished=True) == {ok["key"]}


def test_a_record_whose_key_does_not_match_its_config_is_refused(tmp_path):
    bad = record() | {"key": "0" * 64}
    with Store(tmp_path) as store, pytest.raises(ValueError, match="not the key"):
        store.add(bad)


def test_database_is_in_wal_mode_with_a_unique_key(tmp_path):
    with Store(tmp_path) as store:
        store.add(record())
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = db.execute("SELECT key, config FROM runs").fetchone()
    assert row[0] == config_key(json.loads(row[1]))
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO runs VALUES (?, '{}', 'ok', '{}', 0)", (row[0],))


def test_meta_round_trip_and_status_filter(tmp_path):
    with Store(tmp_path) as store:
        store.set_meta("settings", {"a": [1, 2]})
        store.set_meta("settings", {"a": [3]})
        store.add(record())
        store.add(record("diverged", seed=1))
        assert store.meta() == {"settings": {"a": [3]}}
        assert [r["status"] for r in store.records("diverged")] == ["diverged"]
