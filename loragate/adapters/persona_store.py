"""The personas the API registered, saved under --state-dir so that a restart keeps them.

Each PUT of a name (or vLLM's load route) adds a version row: the bundle's path, the version
published and its engine id, when it was registered, and when a later version replaced it. A
DELETE marks the name's current row deleted: it is not registered again at start-up, and its
history stays. The --persona and --personas-dir personas are configuration, read again at every
start: they are never saved here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from loragate.adapters.errors import PersonaStoreError
from loragate.state_db import StateDatabase

# A file of its own beside the stored responses' (responses.sqlite3), in the one state directory:
# each store has its own schema version (PRAGMA user_version) and its own write lock, so that a
# stream of stored responses never holds up a PUT; and each layer opens its own (the responses
# store is the server's, opened on first use; this one is read at start-up).
DATABASE = "personas.sqlite3"

# Migration n takes the database from user_version n - 1 to n. Append new ones; never edit one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the versions the API registered
        """
        CREATE TABLE persona_versions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            version TEXT NOT NULL,      -- the version published (the manifest's)
            path TEXT NOT NULL,         -- the bundle directory, resolved
            adapter_id INTEGER NOT NULL,  -- its engine id in the process that registered it
            registered REAL NOT NULL,   -- unix time
            replaced REAL,              -- when the next PUT of the name replaced it
            deleted REAL                -- when a DELETE unregistered it
        )
        """,
        "CREATE INDEX persona_versions_by_name ON persona_versions (name, id)",
    ),
)
_COLUMNS = "name, version, path, adapter_id, registered, replaced, deleted"
_CURRENT = "replaced IS NULL AND deleted IS NULL"


@dataclass(frozen=True)
class SavedVersion:
    name: str
    version: str
    path: Path
    adapter_id: int
    registered: float
    replaced: float | None = None
    deleted: float | None = None

    @classmethod
    def of_row(
        cls, row: tuple[str, str, str, int, float, float | None, float | None]
    ) -> SavedVersion:
        name, version, path, adapter_id, registered, replaced, deleted = row
        return cls(name, version, Path(path), adapter_id, registered, replaced, deleted)


class PersonaStore:
    """Thread-safe: the registry calls it from worker threads (`asyncio.to_thread`). Every
    failure of SQLite or of the file is a PersonaStoreError naming the database file."""

    def __init__(self, state_dir: Path):
        self._db = StateDatabase(
            state_dir / DATABASE, MIGRATIONS, PersonaStoreError, "persona database"
        )
        self.path = self._db.path

    def save(self, name: str, version: str, path: Path, adapter_id: int) -> None:
        """A new current version of `name` (the one before it, if any, is marked replaced)."""
        now = time.time()
        with self._db.writing() as db:
            db.execute(
                f"UPDATE persona_versions SET replaced = ? WHERE name = ? AND {_CURRENT}",
                (now, name),
            )
            db.execute(
                "INSERT INTO persona_versions (name, version, path, adapter_id, registered) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, version, str(path), adapter_id, now),
            )

    def mark_deleted(self, name: str) -> bool:
        """Whether `name` had a current version, now deleted (not registered again)."""
        with self._db.writing() as db:
            cursor = db.execute(
                f"UPDATE persona_versions SET deleted = ? WHERE name = ? AND {_CURRENT}",
                (time.time(), name),
            )
        return cursor.rowcount > 0

    def current(self) -> list[SavedVersion]:
        """The current version of each name not deleted: what start-up registers again."""
        with self._db.reading() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM persona_versions WHERE {_CURRENT} ORDER BY name"
            ).fetchall()
        return [SavedVersion.of_row(row) for row in rows]

    def history(self, name: str) -> list[SavedVersion]:
        """Every version of `name` the API registered, oldest first."""
        with self._db.reading() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM persona_versions WHERE name = ? ORDER BY id", (name,)
            ).fetchall()
        return [SavedVersion.of_row(row) for row in rows]

    def close(self) -> None:
        self._db.close()
