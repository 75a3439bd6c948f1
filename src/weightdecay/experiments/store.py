"""The results store: one SQLite row per finished run, safe to kill at any time.

The database (``runs.sqlite`` in the output folder) runs in WAL mode. Each
finished run is inserted in its own transaction, keyed by the sha256 of its
canonical configuration (a ``UNIQUE`` primary key; a conflicting insert is
ignored unless it replaces a ``"failed"`` row), so an interrupted sweep
(``kill -9`` included) loses at most the runs that were in flight, never a
finished one, and a rerun adds no duplicate.
A ``meta`` table keeps what is needed to rebuild the report (command,
settings, data, wall time).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from weightdecay.experiments.train import canonical_json, config_key

__all__ = ["DB_NAME", "Store"]

logger = logging.getLogger(__name__)

DB_NAME = "runs.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY NOT NULL UNIQUE,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
"""


class Store:
    """Finished runs of one output folder.

    Args:
        directory: the output folder; created if missing. The database is
            ``directory / "runs.sqlite"``.

    Example:
        >>> import tempfile
        >>> with Store(tempfile.mkdtemp()) as store:
        ...     len(store)
        0
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DB_NAME
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (finished rows are already on disk)."""
        self._db.close()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def __contains__(self, key: object) -> bool:
        row = self._db.execute("SELECT 1 FROM runs WHERE key = ?", (key,))
        return row.fetchone() is not None

    def keys(self, finished: bool = False) -> set[str]:
        """The keys of every stored run (only ``"ok"``/``"diverged"`` if finished)."""
        query = "SELECT key FROM runs"
        if finished:
            query += " WHERE status != 'failed'"
        return {k for (k,) in self._db.execute(query)}

    def add(self, record: Mapping[str, Any]) -> bool:
        """Store a finished run in one transaction; ignore it if already there.

        A stored ``"failed"`` row is the one exception: a later record of the
        same configuration replaces it, so a rerun can retry failed runs.

        Returns:
            True when the row was written.

        Raises:
            ValueError: ``record["key"]`` is not the key of its configuration.
        """
        key = config_key(record["config"])
        if record.get("key") != key:
            raise ValueError(
                f"record key {record.get('key')!r} is not the key of its config ({key})"
            )
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO runs (key, config, status, record, created) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "status = excluded.status, record = excluded.record, "
                "created = excluded.created "
                "WHERE runs.status = 'failed' AND excluded.status != 'failed'",
                (
                    key,
                    canonical_json(record["config"]),
                    record["status"],
                    json.dumps(record),
                    time.time(),
                ),
            )
        return cursor.rowcount == 1

    def records(self, status: str | Iterable[str] | None = None) -> list[dict]:
        """Every stored record (optionally of the given statuses), oldest first."""
        query, args = "SELECT record FROM runs", ()
        if status is not None:
            wanted = (status,) if isinstance(status, str) else tuple(status)
            query += f" WHERE status IN ({', '.join('?' * len(wanted))})"
            args = wanted
        rows = self._db.execute(query + " ORDER BY created, rowid", args)
        return [json.loads(r) for (r,) in rows]

    def set_meta(self, name: str, value: Any) -> None:
        """Store ``value`` (JSON-serializable) under ``name``, replacing it."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                (name, json.dumps(value)),
            )

    def meta(self) -> dict[str, Any]:
        """Every meta entry, decoded."""
        rows = self._db.execute("SELECT name, value FROM meta")
        return {name: json.loads(value) for name, value in rows}

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
